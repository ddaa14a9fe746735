"""docs/dashboard.png is the Grafana dashboard drawn from the stored results of a real run.

`make dashboard-picture` runs the worker, the ingress and the simulator under load, scraped by a
real Prometheus, stores every panel's query results in docs/dashboard-data.json and draws the
picture from them. These tests re-draw it from the stored data: a panel or query added or changed
in deploy/grafana/dashboard.json without a new run fails here, and so does a picture that is not
what the dashboard and the data give.
"""

from __future__ import annotations

import copy
import importlib.util
import io
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from PIL import Image, ImageChops

ROOT = Path(__file__).resolve().parent.parent
REGENERATE = "run `make dashboard-picture` to make the picture and its data again"


def _load_renderer() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "render_dashboard", ROOT / "deploy/tools/render_dashboard.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


renderer = _load_renderer()


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    """The dashboard as committed."""
    return dict(renderer.load())


@pytest.fixture(scope="module")
def data() -> dict[str, Any]:
    """The stored query results of the last run."""
    return dict(json.loads(renderer.DATA.read_text()))


def test_every_panel_and_query_has_stored_results(dashboard: dict[str, Any], data: dict[str, Any]) -> None:
    """Each query of each panel has results stored for exactly that query, and nothing else is stored."""
    assert renderer.missing(dashboard, data) == [], REGENERATE
    expected = renderer.expanded_targets(dashboard, data["scrape_s"], data["variables"])
    assert {key: found["expr"] for key, found in data["targets"].items()} == expected, REGENERATE
    queried = {key.split("/")[0] for key in expected}
    drawn = {str(p["id"]) for p in renderer.panels(dashboard) if p.get("type") != "row"}
    assert drawn == queried  # every panel that draws something has a query


def test_the_run_chose_every_variable_grafana_would_pick_a_value_for(
    dashboard: dict[str, Any], data: dict[str, Any]
) -> None:
    """The run stored a value for each single-valued variable without a default (namespace, vhost)."""
    assert renderer.unchosen(dashboard, data["variables"]) == [], REGENERATE
    assert {"namespace", "vhost"} <= set(data["variables"])
    assert all(value and value != ".*" for value in data["variables"].values())


def test_the_run_behind_the_picture_exercised_the_dashboard(data: dict[str, Any]) -> None:
    """At least 90 % of the queries returned series: the picture shows a working system, not gaps."""
    with_series = [key for key, found in data["targets"].items() if found["series"]]
    assert len(with_series) >= 0.9 * len(data["targets"]), sorted(set(data["targets"]) - set(with_series))
    assert data["end"] - data["start"] >= 120  # minutes of a run, not a snapshot


def test_picture_is_the_dashboard_drawn_from_the_stored_results(
    dashboard: dict[str, Any], data: dict[str, Any], tmp_path: Path
) -> None:
    """Re-drawing dashboard.json with the stored results gives the committed picture, pixel for pixel."""
    drawn = Image.open(io.BytesIO(renderer.render(dashboard, data))).convert("RGBA")
    committed = Image.open(renderer.PICTURE).convert("RGBA")
    assert drawn.size == committed.size, REGENERATE
    box = ImageChops.difference(drawn, committed).getbbox()
    if box is not None:
        drawn.save(tmp_path / "dashboard.png")
    assert box is None, f"pixels differ in {box} (new drawing: {tmp_path / 'dashboard.png'}); {REGENERATE}"


def test_template_variables_are_substituted_from_the_dashboard() -> None:
    """Current values go in, "All" and empty become allValue or `.*`, constants their query; intervals too."""
    templating = {
        "list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus"},
            {"name": "namespace", "type": "query", "current": {"value": "$__all"}, "allValue": ".+"},
            {"name": "vhost", "type": "query", "current": {"text": "/", "value": "/"}},
            {"name": "pod", "type": "query", "current": {}},
            {"name": "team", "type": "constant", "query": "crm"},
            {"name": "zone", "type": "custom", "current": {"value": ["a", "b"]}},
        ]
    }
    values = {**renderer.variable_values({"templating": templating}), **renderer.intervals(2)}
    expr = (
        'rate(x{namespace=~"$namespace",vhost=~"${vhost}",pod=~"[[pod]]",t="$team",z=~"$zone"}'
        "[$__rate_interval])"
    )

    assert (
        renderer.expand(expr, values)
        == 'rate(x{namespace=~".+",vhost=~"/",pod=~".*",t="crm",z=~"(a|b)"}[8s])'
    )
    with pytest.raises(ValueError, match=r"unknown variable \$cluster"):
        renderer.expand('up{cluster="$cluster"}', values)


def test_values_chosen_for_the_run_go_in_and_are_required_where_grafana_picks_one() -> None:
    """A chosen value beats the current one; a single-valued variable without a value must be chosen."""
    templating = {
        "list": [
            {"name": "namespace", "type": "query", "current": {"value": "old"}},
            {"name": "vhost", "type": "query", "current": {}, "includeAll": False},
            {"name": "pod", "type": "query", "current": {}, "includeAll": True},
        ]
    }
    dashboard = {"templating": templating}

    chosen = renderer.variable_values(dashboard, {"namespace": "ns", "vhost": "crm"})

    assert chosen == {"namespace": "ns", "vhost": "crm", "pod": ".*"}
    assert renderer.unchosen(dashboard, {}) == ["vhost"]
    assert renderer.unchosen(dashboard, {"vhost": "crm"}) == []
    with pytest.raises(ValueError, match="give a value for \\$vhost"):
        renderer.query("http://127.0.0.1:1", dashboard, 0, 1, 2)
    with pytest.raises(ValueError, match="no template variable cluster"):
        renderer.variable_values(dashboard, {"cluster": "eu"})


def test_a_panel_added_without_a_new_run_is_refused(dashboard: dict[str, Any], data: dict[str, Any]) -> None:
    """A new panel (or a changed query) has no stored results: named as missing, and not drawn."""
    changed = copy.deepcopy(dashboard)
    extra = copy.deepcopy(next(p for p in changed["panels"] if p.get("type") == "timeseries"))
    extra["id"] = 999
    changed["panels"].append(extra)
    first = next(p for p in changed["panels"] if p.get("targets"))
    first["targets"][0]["expr"] += " * 2"

    problems = renderer.missing(changed, data)

    assert f"999/{extra['targets'][0]['refId']}: no data stored" in problems
    assert f"{first['id']}/{first['targets'][0]['refId']}: data stored for another query" in problems
    with pytest.raises(ValueError, match="does not match the dashboard"):
        renderer.render(changed, data)
