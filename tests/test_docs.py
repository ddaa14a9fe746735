"""The operator docs stay true: every alert has a runbook section, every command shown parses."""

from __future__ import annotations

import re
import shlex
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from service.__main__ import build_parser, commands

ROOT = Path(__file__).resolve().parent.parent
RUNBOOK = ROOT / "docs" / "runbook.md"
RULES = ROOT / "deploy" / "prometheus" / "rules" / "workflow-canceller.rules.yml"
# `canceller` is the runbook's shell function for `kubectl exec ... -- workflow-canceller`.
COMMAND = re.compile(
    r"(?:^|[\s`(])(?:canceller|workflow-canceller)((?: [^\s`#|>)][^`#|>)]*?)?)\s*(?:#|`|\)|$|\||>)"
)


def _alerts() -> list[str]:
    rules = yaml.safe_load(RULES.read_text())
    return [rule["alert"] for group in rules["groups"] for rule in group["rules"] if "alert" in rule]


def _command_lines(text: str) -> list[str]:
    found = []
    for line in text.splitlines():
        if line.lstrip().startswith(("canceller()", "canceller ()")):
            continue
        for match in COMMAND.finditer(line):
            args = re.split(r"[;&>]", match.group(1))[0].strip()  # up to the shell's next command
            usage = any(mark in args for mark in ("[", "...", "\\"))  # a synopsis, not an example
            if args and not usage and re.match(r"^[a-z]", args):
                found.append(args)
    return found


def test_every_alert_has_a_runbook_section() -> None:
    """Each alert name in the rules is a `###` heading of docs/runbook.md."""
    headings = set(re.findall(r"^### (\S+)$", RUNBOOK.read_text(), flags=re.MULTILINE))
    alerts = _alerts()
    assert len(alerts) >= 9
    assert set(alerts) <= headings, set(alerts) - headings


@pytest.mark.parametrize("doc", ["docs/runbook.md", "README.md"])
def test_every_command_shown_parses(doc: str) -> None:
    """Each `workflow-canceller ...` line in the docs is accepted by the real argument parser."""
    parser = build_parser(commands())
    lines = [line for line in _command_lines((ROOT / doc).read_text()) if line.split()[0] in commands()]
    assert len(lines) >= (15 if doc == "docs/runbook.md" else 8)  # the extraction found them
    for line in lines:
        argv = [a for a in shlex.split(line.replace('"$NS"', "ns")) if not a.startswith("$")]
        try:
            parser.parse_args(argv)
        except SystemExit as error:
            raise AssertionError(f"{doc}: `workflow-canceller {line}` does not parse") from error


def test_nothing_refers_to_files_outside_the_repository() -> None:
    """The contract lives in docs/contract.md; no tracked file points at a sibling folder or at
    the contract's or API notes' old homes outside the repository."""
    outside = ("../" + "shared", "CONTRACT" + ".md", "DIALNEXA_API" + ".md")
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert (ROOT / "docs" / "contract.md").is_file()
    offenders = []
    for name in tracked:
        path = ROOT / name
        if name.endswith((".lock", ".json", ".png")) or not path.is_file():
            continue
        text = path.read_text(errors="replace")
        offenders += [f"{name}: {word}" for word in outside if word in text]
    assert offenders == []


def test_the_licence_is_in_the_repository_and_the_package() -> None:
    """LICENSE holds the Apache 2.0 text and pyproject.toml declares the same licence and authors."""
    licence = (ROOT / "LICENSE").read_text()
    assert "Apache License" in licence and "Version 2.0" in licence
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == {"text": "Apache-2.0"}
    assert project["authors"]
