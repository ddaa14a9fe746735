"""The import rules of docs/architecture.md, read from the code's own imports."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "service"


def module_name(path: Path) -> str:
    """`service/core/handle.py` -> `service.core.handle` (a package's `__init__` is the package)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every module `path` imports, relative imports resolved, names imported from a package too."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def modules(prefix: str) -> list[Path]:
    """The files of the part named `prefix` (a module or a package)."""
    path = ROOT / prefix.replace(".", "/")
    return sorted(path.rglob("*.py")) if path.is_dir() else [path.with_suffix(".py")]


def offending(prefix: str, forbidden: tuple[str, ...]) -> list[str]:
    """`file: import` for each import of a `forbidden` module (or one inside it) by the part."""
    return [
        f"{module_name(path)}: {target}"
        for path in modules(prefix)
        for target in sorted(imports_of(path))
        if any(target == f or target.startswith(f + ".") for f in forbidden)
    ]


BROKER_LIBRARIES = ("aio_pika", "aiormq", "pamqp")
HTTP_LIBRARIES = ("aiohttp", "httpx")
BROKER_SIDE = ("service.broker",)
LIBRARIES = (*BROKER_LIBRARIES, *HTTP_LIBRARIES)
TRACING_LIBRARIES = ("opentelemetry",)  # spans are made at the edges, never in the core
CORE_MAY_NOT = (
    *LIBRARIES,
    *TRACING_LIBRARIES,
    *BROKER_SIDE,
    "service.dialnexa",
    "service.ratelimit",
    "service.observe",
    "service.ops",
    "service.ingress",
    "service.app",
    "service.config",
)
RULES = {
    "service.core": CORE_MAY_NOT,
    "service.retry": (*LIBRARIES, *BROKER_SIDE, "service.dialnexa", "service.ratelimit"),
    "service.ratelimit": (*LIBRARIES, *BROKER_SIDE, "service.dialnexa", "service.app"),
    "service.dialnexa": (*BROKER_LIBRARIES, *BROKER_SIDE, "service.ingress", "service.ops", "service.app"),
    "service.observe": ("service.core", *BROKER_SIDE, "service.dialnexa", "service.ratelimit", "service.app"),
    "service.broker": ("service.ingress", "service.ops", "service.app"),
    "service.ingress": (
        "service.dialnexa",
        "service.ratelimit",
        "service.ops",
        "service.app",
        "service.broker.worker",
        "service.broker.intake",
        "service.broker.settle",
    ),
    "service.ops": ("service.ingress", "service.app", "service.broker.worker", "service.broker.intake"),
    "service.simulator": ("service.core", *BROKER_SIDE, "service.dialnexa", "service.config", "service.app"),
}


@pytest.mark.parametrize("part", sorted(RULES))
def test_part_imports_only_what_it_may(part: str) -> None:
    """Each part imports none of the parts and libraries docs/architecture.md forbids it."""
    assert offending(part, RULES[part]) == []


def test_only_the_command_line_imports_the_composition_root() -> None:
    """`service.app` is imported by `service.__main__` alone."""
    importers = [
        module_name(path)
        for path in sorted(PACKAGE.rglob("*.py"))
        if module_name(path) not in ("service.__main__", "service.app") and "service.app" in imports_of(path)
    ]
    assert importers == []


def test_the_package_imports_nothing_from_outside_it() -> None:
    """The runtime package does not reach into tests, testkit, benchmarks, drills or docs tooling."""
    outside = ("tests", "testkit", "bench", "drills", "scripts")
    assert offending("service", outside) == []


def test_a_forbidden_import_is_caught() -> None:
    """The rule checker sees a relative import of a forbidden part (it could not fail otherwise)."""
    fake = PACKAGE / "core" / "handle.py"
    found = imports_of(fake)
    assert "service.core.ports" in found and "service.retry" in found
    assert offending("service.broker", ("service.core",))  # the broker side does use the core


TOOL_MODULES = sorted(
    ".".join(path.relative_to(ROOT).with_suffix("").parts)
    for folder in ("bench", "drills", "scripts", "testkit", "deploy/tools")
    for path in (ROOT / folder).glob("*.py")
    if path.name != "__main__.py"
)


@pytest.mark.parametrize("module", TOOL_MODULES)
def test_every_tool_module_imports(module: str) -> None:
    """Benchmarks, drills, scripts and deploy tools import: a move in the package breaks no tool."""
    importlib.import_module(module)
