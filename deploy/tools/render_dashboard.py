"""Draw the Grafana dashboard (deploy/grafana/dashboard.json) as a PNG, from real Prometheus data.

    python deploy/tools/render_dashboard.py query --prometheus URL --start S --end E [--scrape-s N]
        [--var NAME=VALUE ...]
    python deploy/tools/render_dashboard.py render [--data FILE] [--out FILE]

`query` runs every panel's PromQL (template variables replaced by the value given with `--var`,
else their current value, `.*` for "All"; `$__interval` and `$__rate_interval` worked out the way
Grafana does for the given scrape interval) against Prometheus's range API and stores the results,
and the `--var` values, in docs/dashboard-data.json. A variable without "All" and without a current
value (the dashboard's `namespace` and `vhost`: Grafana picks the first value it finds) must be
given with `--var`.
`render` lays the panels out by their gridPos and draws them (stat and time series panels: units,
legends from legendFormat, thresholds, value mappings, stacking and fill) into docs/dashboard.png.
The same data and the same dashboard always give the same pixels: `make dashboard-picture` makes
both files from a real run, and the tests re-render the picture from the stored data.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import re
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboard.json"
DATA = ROOT / "docs" / "dashboard-data.json"
PICTURE = ROOT / "docs" / "dashboard.png"

# Grafana's grid: 24 columns, rows of 30 px; its dark theme and classic palette.
COLUMNS = 24
CELL_PX = 30
WIDTH_PX = 1600
HEADER_PX = 44
GAP_PX = 8
DPI = 100
BACKGROUND = "#111217"
PANEL = "#181b1f"
BORDER = "#2c3235"
TEXT = "#ccccdc"
MUTED = "#8e8e9a"
GRID = "#2a2d33"
NAMED_COLORS = {
    "green": "#73BF69",
    "red": "#F2495C",
    "yellow": "#FADE2A",
    "orange": "#FF9830",
    "blue": "#5794F2",
    "purple": "#B877D9",
    "text": TEXT,
    "transparent": PANEL,
}
CLASSIC_PALETTE = (
    "#7EB26D",
    "#EAB839",
    "#6ED0E0",
    "#EF843C",
    "#E24D42",
    "#1F78C1",
    "#BA43A9",
    "#705DA0",
    "#508642",
    "#CCA300",
    "#447EBC",
    "#C15C17",
    "#890F02",
    "#0A437C",
    "#6D1F62",
    "#584477",
)
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")
_LEGEND_LABEL = re.compile(r"\{\{\s*([A-Za-z_]\w*)\s*\}\}")


# ------------------------------------------------------------------------------------------------
# the dashboard: panels, targets, variables


def load(path: Path = DASHBOARD) -> dict[str, Any]:
    """The dashboard JSON."""
    return dict(json.loads(path.read_text()))


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested panels (collapsed rows) included, in document order."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def targets(dashboard: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(key, panel, target) for every query of every panel; key = '<panel id>/<refId>'."""
    for panel in panels(dashboard):
        if panel.get("type") == "row":
            continue
        for target in panel.get("targets", []):
            if target.get("expr") and not target.get("hide"):
                yield f"{panel['id']}/{target.get('refId', 'A')}", panel, target


def variable_values(dashboard: dict[str, Any], chosen: dict[str, str] | None = None) -> dict[str, str]:
    """Each template variable's value as it goes into a query: the one `chosen` for it; else its
    current value; `allValue` or `.*` for "All" or no value; a constant's or text box's query. Data
    source variables pick the data source, not a value in the query, and are left out. A chosen
    value for a variable the dashboard does not have is an error."""
    chosen = chosen or {}
    values: dict[str, str] = {}
    for variable in dashboard.get("templating", {}).get("list", []):
        kind = variable.get("type")
        if kind == "datasource":
            continue
        if variable["name"] in chosen:
            values[str(variable["name"])] = str(chosen[variable["name"]])
            continue
        value = (variable.get("current") or {}).get("value")
        if isinstance(value, list):
            value = value[0] if len(value) == 1 else "(" + "|".join(map(str, value)) + ")"
        if value in (None, "") and kind in ("constant", "textbox"):
            value = variable.get("query")
        if value in (None, "", "$__all") or isinstance(value, dict):
            value = variable.get("allValue") or ".*"
        values[str(variable["name"])] = str(value)
    unknown = sorted(set(chosen) - set(values))
    if unknown:
        raise ValueError(f"the dashboard has no template variable {', '.join(unknown)}")
    return values


def unchosen(dashboard: dict[str, Any], chosen: dict[str, str]) -> list[str]:
    """Query variables without "All" and without a current value that `chosen` leaves out: Grafana
    would pick the first value it finds, and a query for `.*` would find nothing."""
    return [
        str(variable["name"])
        for variable in dashboard.get("templating", {}).get("list", [])
        if variable.get("type") == "query"
        and not variable.get("includeAll")
        and (variable.get("current") or {}).get("value") in (None, "", [])
        and variable["name"] not in chosen
    ]


def intervals(scrape_s: int) -> dict[str, str]:
    """`$__interval` and `$__rate_interval` as Grafana sets them on a short range: the interval is
    the data source's scrape interval, the rate interval max(interval + scrape, 4 x scrape)."""
    rate = max(2 * scrape_s, 4 * scrape_s)
    return {
        "__interval": f"{scrape_s}s",
        "__interval_ms": str(scrape_s * 1000),
        "__rate_interval": f"{rate}s",
    }


def expand(expr: str, values: dict[str, str]) -> str:
    """`expr` with every `$name`, `${name}`, `${name:format}` and `[[name]]` replaced; an unknown
    variable is an error (the picture would show a query Grafana cannot run)."""

    def replace(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        if name not in values:
            raise ValueError(f"unknown variable ${name} in {expr!r}")
        return values[name]

    return _VARIABLE.sub(replace, expr)


def expanded_targets(
    dashboard: dict[str, Any], scrape_s: int, chosen: dict[str, str] | None = None
) -> dict[str, str]:
    """key -> the PromQL sent to Prometheus, with the variables' values `chosen` for the run."""
    values = {**variable_values(dashboard, chosen), **intervals(scrape_s)}
    return {key: expand(str(target["expr"]), values) for key, _, target in targets(dashboard)}


# ------------------------------------------------------------------------------------------------
# query: Prometheus's range API into the data file


def query(
    prometheus: str,
    dashboard: dict[str, Any],
    start: int,
    end: int,
    scrape_s: int,
    chosen: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Every target's range query result, values rounded to 6 significant digits, times as seconds
    from `start`; NaN and infinities (a quantile of nothing) are stored as null, drawn as gaps. The
    variables' values `chosen` for the run are stored with the results (`variables`)."""
    chosen = dict(chosen or {})
    left_out = unchosen(dashboard, chosen)
    if left_out:
        raise ValueError("give a value for " + ", ".join(f"${name} (--var {name}=...)" for name in left_out))
    found: dict[str, Any] = {}
    titles = {key: str(panel.get("title", "")) for key, panel, _ in targets(dashboard)}
    for key, expr in expanded_targets(dashboard, scrape_s, chosen).items():
        params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": scrape_s})
        url = f"{prometheus.rstrip('/')}/api/v1/query_range?{params}"
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"not an HTTP URL: {prometheus}")
        with urllib.request.urlopen(url, timeout=30) as answer:  # noqa: S310  # checked to be http(s) just above
            body = json.loads(answer.read())
        if body.get("status") != "success":
            raise RuntimeError(f"{key}: {body.get('error', body)}")
        series = [
            {
                "labels": dict(sorted(item["metric"].items())),
                "values": [[int(float(t)) - start, _rounded(v)] for t, v in item["values"]],
            }
            for item in body["data"]["result"]
        ]
        series.sort(key=lambda item: json.dumps(item["labels"], sort_keys=True))
        found[key] = {"panel": titles[key], "expr": expr, "series": series}
    return {"start": start, "end": end, "scrape_s": scrape_s, "variables": chosen, "targets": found}


def _rounded(value: str) -> float | None:
    number = float(value)
    if math.isnan(number) or math.isinf(number):
        return None
    return float(f"{number:.6g}")


def missing(dashboard: dict[str, Any], data: dict[str, Any]) -> list[str]:
    """Targets of the dashboard the data file has no result for, or a result of another query."""
    stored = data.get("targets", {})
    problems = []
    for key, expr in expanded_targets(dashboard, int(data["scrape_s"]), data.get("variables")).items():
        if key not in stored:
            problems.append(f"{key}: no data stored")
        elif stored[key]["expr"] != expr:
            problems.append(f"{key}: data stored for another query")
    return problems


# ------------------------------------------------------------------------------------------------
# units, legends, colours


def color(name: str | None, index: int = 0) -> str:
    """A Grafana colour name or hex, or the classic palette's `index`th colour."""
    if not name:
        return CLASSIC_PALETTE[index % len(CLASSIC_PALETTE)]
    return NAMED_COLORS.get(name, name)


def _number(value: float, decimals: int | None = None) -> str:
    if decimals is None:
        magnitude = abs(value)
        decimals = 0 if magnitude >= 100 or value == int(value) else 1 if magnitude >= 10 else 2
    return f"{value:.{decimals}f}"


def _si(value: float) -> str:
    for limit, suffix in ((1e9, " Bil"), (1e6, " Mil"), (1e3, " K")):
        if abs(value) >= limit:
            return _number(value / limit) + suffix
    return _number(value)


def format_value(value: float, unit: str | None) -> str:
    """A value as Grafana shows it in `unit` (the units this dashboard uses)."""
    if unit == "s":
        magnitude = abs(value)
        if magnitude == 0:
            return "0 s"
        if magnitude < 1e-3:
            return _number(value * 1e6) + " µs"
        if magnitude < 1:
            return _number(value * 1e3) + " ms"
        if magnitude < 60:
            return _number(value) + " s"
        return _number(value / 60) + " min"
    if unit == "percentunit":
        return _number(value * 100) + "%"
    if unit == "ops":
        return _si(value) + " ops/s"
    if unit == "reqps":
        return _si(value) + " req/s"
    return _si(value)


def legend(series: dict[str, Any], target: dict[str, Any]) -> str:
    """The series name: legendFormat with `{{label}}` filled in, else the label set, as Grafana."""
    labels: dict[str, str] = series["labels"]
    form = target.get("legendFormat")
    if form and form != "__auto":
        return _LEGEND_LABEL.sub(lambda m: labels.get(m.group(1), ""), str(form)).strip()
    shown = {k: v for k, v in labels.items() if k != "__name__"}
    name = labels.get("__name__", "")
    if not shown:
        return name or str(target.get("expr", ""))
    return name + "{" + ", ".join(f'{k}="{v}"' for k, v in shown.items()) + "}"


def threshold_color(value: float, field: dict[str, Any]) -> str:
    """The colour of the highest threshold step at or below `value`."""
    chosen = "green"
    for step in field.get("thresholds", {}).get("steps", []):
        if step.get("value") is None or value >= step["value"]:
            chosen = step.get("color", chosen)
    return color(chosen)


def mapped(value: float, field: dict[str, Any]) -> tuple[str, str] | None:
    """(text, colour) of a value mapping that matches `value` exactly, if any."""
    for mapping in field.get("mappings", []):
        if mapping.get("type") != "value":
            continue
        for key, result in mapping.get("options", {}).items():
            try:
                matches = float(key) == value
            except ValueError:
                continue
            if matches:
                text = result.get("text") or format_value(value, field.get("unit"))
                return str(text), color(result.get("color") or threshold_color(value, field))
    return None


# ------------------------------------------------------------------------------------------------
# render


def render(dashboard: dict[str, Any], data: dict[str, Any]) -> bytes:
    """The dashboard drawn from `data`, as PNG bytes (same inputs, same pixels)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    problems = missing(dashboard, data)
    if problems:
        raise ValueError("the data does not match the dashboard: " + "; ".join(problems))
    style = {
        "font.family": "DejaVu Sans",
        "font.size": 8,
        "text.color": TEXT,
        "axes.labelcolor": TEXT,
        "xtick.color": MUTED,
        "ytick.color": MUTED,
        "axes.edgecolor": BORDER,
        "path.simplify": False,
        "text.hinting": "default",
    }
    with matplotlib.rc_context(style):
        laid_out = [p for p in dashboard.get("panels", []) if "gridPos" in p]
        rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in laid_out)
        height_px = HEADER_PX + rows * CELL_PX + GAP_PX
        figure = pyplot.figure(figsize=(WIDTH_PX / DPI, height_px / DPI), dpi=DPI, facecolor=BACKGROUND)
        try:
            canvas = _Canvas(figure, height_px)
            _header(canvas, dashboard, data)
            for panel in laid_out:
                _panel(canvas, panel, data)
            drawn = io.BytesIO()
            figure.savefig(drawn, format="png", dpi=DPI, facecolor=BACKGROUND, metadata={"Software": None})
        finally:
            pyplot.close(figure)
    return _palette_png(drawn.getvalue())


def _palette_png(png: bytes) -> bytes:
    """The picture with a 256-colour palette (no dithering): a third of the size, the same look."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    small = image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    out = io.BytesIO()
    small.save(out, format="PNG", optimize=True)
    return out.getvalue()


class _Canvas:
    """Pixel boxes (left, top, width, height from the figure's top left) to figure fractions."""

    def __init__(self, figure: Any, height_px: int) -> None:
        self.figure = figure
        self.height_px = height_px

    def rect(self, left: float, top: float, width: float, height: float) -> list[float]:
        return [
            left / WIDTH_PX,
            1 - (top + height) / self.height_px,
            width / WIDTH_PX,
            height / self.height_px,
        ]

    def box(self, left: float, top: float, width: float, height: float, **style: Any) -> Any:
        axes = self.figure.add_axes(self.rect(left, top, width, height))
        axes.set_axis_off()
        axes.set_xlim(0, width)
        axes.set_ylim(height, 0)  # y grows downwards, in pixels
        if "facecolor" in style:
            from matplotlib.patches import FancyBboxPatch

            axes.add_patch(
                FancyBboxPatch(
                    (1, 1),
                    width - 2,
                    height - 2,
                    boxstyle="round,pad=0,rounding_size=3",
                    facecolor=style["facecolor"],
                    edgecolor=style.get("edgecolor", BORDER),
                    linewidth=0.8,
                )
            )
        return axes


def _header(canvas: _Canvas, dashboard: dict[str, Any], data: dict[str, Any]) -> None:
    axes = canvas.box(0, 0, WIDTH_PX, HEADER_PX)
    axes.text(GAP_PX, 20, dashboard.get("title", ""), fontsize=13, weight="bold", va="center")
    values = variable_values(dashboard, data.get("variables"))
    shown = "   ".join(f"{name}: {'All' if v == '.*' else v}" for name, v in values.items())
    start, end = (datetime.fromtimestamp(data[k], UTC) for k in ("start", "end"))
    span = f"{start:%Y-%m-%d %H:%M:%S} to {end:%H:%M:%S} UTC"
    axes.text(GAP_PX, 37, shown, fontsize=8, color=MUTED, va="center")
    axes.text(WIDTH_PX - GAP_PX, 20, span, fontsize=9, color=MUTED, ha="right", va="center")


def _panel(canvas: _Canvas, panel: dict[str, Any], data: dict[str, Any]) -> None:
    grid = panel["gridPos"]
    left = grid["x"] * WIDTH_PX / COLUMNS + GAP_PX / 2
    top = HEADER_PX + grid["y"] * CELL_PX + GAP_PX / 2
    width = grid["w"] * WIDTH_PX / COLUMNS - GAP_PX
    height = grid["h"] * CELL_PX - GAP_PX
    if panel.get("type") == "row":
        axes = canvas.box(left, top, width, height)
        marker = "▸" if panel.get("collapsed") else "▾"
        axes.text(
            2, height / 2 + 2, f"{marker}  {panel.get('title', '')}", fontsize=10, weight="bold", va="center"
        )
        return
    field = panel.get("fieldConfig", {}).get("defaults", {})
    results = [
        (target, series)
        for target in panel.get("targets", [])
        if not target.get("hide") and target.get("expr")
        for series in data["targets"][f"{panel['id']}/{target.get('refId', 'A')}"]["series"]
    ]
    colored = panel.get("type") == "stat" and panel.get("options", {}).get("colorMode") == "background"
    value = _last(results)
    face = PANEL
    if colored and value is not None:
        face = (mapped(value, field) or ("", threshold_color(value, field)))[1]
    frame = canvas.box(left, top, width, height, facecolor=face)
    title_color = "#ffffff" if face != PANEL else TEXT
    frame.text(8, 14, panel.get("title", ""), fontsize=8.5, weight="bold", va="center", color=title_color)
    inner = (left + 8, top + 26, width - 16, height - 32)
    if not any(v is not None for _, series in results for _, v in series["values"]):
        frame.text(width / 2, height / 2 + 8, "No data", fontsize=11, color=MUTED, ha="center", va="center")
        return
    if panel.get("type") == "stat":
        _stat(frame, panel, field, results, width, height, face != PANEL)
    else:
        _timeseries(canvas, panel, field, results, data, inner)


def _time_ticks(start: int, span: int, most: int) -> list[int]:
    """Offsets from `start` of round clock times (every 5 s, 10 s, ... 1 h), at most `most` of them."""
    for every in (5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600):
        if span / every <= most:
            break
    first = -start % every
    return list(range(first, span + 1, every))


def _last(results: list[tuple[dict[str, Any], dict[str, Any]]]) -> float | None:
    """The last non-null value of the first series (the stat panels' `lastNotNull`)."""
    for _, series in results[:1]:
        for _, value in reversed(series["values"]):
            if value is not None:
                return float(value)
    return None


def _stat(
    frame: Any,
    panel: dict[str, Any],
    field: dict[str, Any],
    results: list[tuple[dict[str, Any], dict[str, Any]]],
    width: float,
    height: float,
    on_color: bool,
) -> None:
    value = _last(results)
    if value is None:
        return
    hit = mapped(value, field)
    text = hit[0] if hit else format_value(value, field.get("unit"))
    ink = "#ffffff" if on_color else (hit[1] if hit else threshold_color(value, field))
    size = min(30.0, height * 0.32, width / max(len(text), 1) * 1.3)
    frame.text(
        width / 2, height / 2 + 10, text, fontsize=size, weight="bold", color=ink, ha="center", va="center"
    )


def _timeseries(
    canvas: _Canvas,
    panel: dict[str, Any],
    field: dict[str, Any],
    results: list[tuple[dict[str, Any], dict[str, Any]]],
    data: dict[str, Any],
    inner: tuple[float, float, float, float],
) -> None:
    custom = field.get("custom", {})
    unit = field.get("unit")
    names = [legend(series, target) for target, series in results]
    show_legend = panel.get("options", {}).get("legend", {}).get("showLegend", True)
    longest = max(len(name) for name in names)
    per_row = max(1, int(inner[2] // (longest * 5.2 + 26)))
    legend_rows = math.ceil(len(names) / per_row) if show_legend else 0
    left, top, width, height = inner
    axis_px = 58
    plot = canvas.figure.add_axes(
        canvas.rect(left + axis_px, top + 4, width - axis_px - 4, height - 22 - legend_rows * 13)
    )
    plot.set_facecolor(PANEL)
    for side in ("top", "right", "left", "bottom"):
        plot.spines[side].set_visible(False)
    plot.grid(color=GRID, linewidth=0.6)
    plot.tick_params(length=0, labelsize=7)
    span = data["end"] - data["start"]
    stacked = custom.get("stacking", {}).get("mode") == "normal"
    fill = float(custom.get("fillOpacity", 0)) / 100
    baseline: dict[int, float] = {}
    handles = []
    for index, ((_target, series), name) in enumerate(zip(results, names, strict=True)):
        shade = color(None, index)
        xs = [t for t, _ in series["values"]]
        ys = [math.nan if v is None else float(v) for _, v in series["values"]]
        if stacked:
            lows = [baseline.get(t, 0.0) for t in xs]
            ys = [low + (0.0 if math.isnan(y) else y) for low, y in zip(lows, ys, strict=True)]
            baseline.update(zip(xs, ys, strict=True))
        else:
            lows = [0.0] * len(xs)
        (line,) = plot.plot(xs, ys, color=shade, linewidth=float(custom.get("lineWidth", 1)), label=name)
        if fill:
            plot.fill_between(xs, lows, ys, color=shade, alpha=fill, linewidth=0)
        handles.append(line)
    style = custom.get("thresholdsStyle", {}).get("mode", "off")
    if style in ("line", "dashed", "line+area", "dashed+area"):
        for step in field.get("thresholds", {}).get("steps", []):
            if step.get("value") is not None:
                plot.axhline(step["value"], color=color(step.get("color")), linewidth=0.9, linestyle="--")
    plot.set_xlim(0, span)
    if field.get("min") is not None:
        plot.set_ylim(bottom=field["min"])
    if field.get("max") is not None:
        plot.set_ylim(top=field["max"])
    _, top_y = plot.get_ylim()
    if field.get("min") is not None and top_y <= field["min"]:
        plot.set_ylim(field["min"], field["min"] + 1)
    from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator

    plot.yaxis.set_major_locator(MaxNLocator(nbins=4, min_n_ticks=2))
    plot.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: format_value(v, unit)))
    plot.xaxis.set_major_locator(FixedLocator(_time_ticks(data["start"], span, max(2, int(width // 110)))))
    plot.xaxis.set_major_formatter(
        FuncFormatter(lambda v, _pos: f"{datetime.fromtimestamp(data['start'] + v, UTC):%H:%M:%S}")
    )
    if show_legend:
        plot.legend(
            handles=handles,
            loc="upper left",
            bbox_to_anchor=(-axis_px / (width - axis_px - 4), -0.1),
            ncol=per_row,
            frameon=False,
            fontsize=7,
            handlelength=1.2,
            columnspacing=1.2,
            borderaxespad=0,
            labelcolor=TEXT,
        )


# ------------------------------------------------------------------------------------------------
# the command


def _assignment(text: str) -> tuple[str, str]:
    """`--var NAME=VALUE` as (name, value)."""
    name, equals, value = text.partition("=")
    if not equals or not name:
        raise argparse.ArgumentTypeError(f"--var takes NAME=VALUE, not {text!r}")
    return name, value


def main(argv: list[str] | None = None) -> int:
    """`query` or `render`; exit 1 with one line per problem."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dashboard", type=Path, default=DASHBOARD)
    parser.add_argument("--data", type=Path, default=DATA)
    commands = parser.add_subparsers(dest="command", required=True)
    ask = commands.add_parser("query", help="run every panel's queries against Prometheus; write --data")
    ask.add_argument("--prometheus", required=True, help="e.g. http://127.0.0.1:9090")
    ask.add_argument("--start", type=int, required=True, help="Unix seconds")
    ask.add_argument("--end", type=int, required=True, help="Unix seconds")
    ask.add_argument("--scrape-s", type=int, default=2, help="Prometheus's scrape interval (default 2)")
    ask.add_argument(
        "--var",
        action="append",
        default=[],
        type=_assignment,
        metavar="NAME=VALUE",
        help="a template variable's value for this run (repeatable), e.g. --var vhost=crm",
    )
    draw = commands.add_parser("render", help="draw the dashboard from --data")
    draw.add_argument("--out", type=Path, default=PICTURE)
    args = parser.parse_args(argv)
    dashboard = load(args.dashboard)
    if args.command == "query":
        chosen = dict(args.var)
        try:
            data = query(args.prometheus, dashboard, args.start, args.end, args.scrape_s, chosen)
        except ValueError as error:
            print(error, file=sys.stderr)
            return 1
        args.data.write_text(json.dumps(data, separators=(",", ":"), sort_keys=True) + "\n")
        empty = sorted(key for key, found in data["targets"].items() if not found["series"])
        print(
            f"{len(data['targets'])} queries stored in {args.data}; "
            f"without series: {', '.join(empty) or 'none'}"
        )
        return 0
    data = json.loads(args.data.read_text())
    problems = missing(dashboard, data)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    args.out.write_bytes(render(dashboard, data))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
