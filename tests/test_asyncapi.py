"""docs/asyncapi.yaml: generated from the models, valid AsyncAPI 3, and true to what the service sends."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
import yaml

from scripts import asyncapi
from service.core.events import WorkflowCancelled, workflow_cancelled
from tests.support import campaign, complaint

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "asyncapi.yaml"


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    """The committed document."""
    return dict(yaml.safe_load(DOC.read_text()))


def _validator(document: dict[str, Any], schema: str) -> jsonschema.protocols.Validator:
    root = {"$ref": f"#/components/schemas/{schema}", "components": document["components"]}
    return jsonschema.Draft202012Validator(root)


def test_document_matches_the_models(document: dict[str, Any]) -> None:
    """The committed file is exactly what the models generate (run scripts/asyncapi.py after a change)."""
    assert document == json.loads(json.dumps(asyncapi.build()))


def test_every_reference_resolves(document: dict[str, Any]) -> None:
    """Every $ref points at something that exists in the document."""
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(document)
    assert len(refs) > 10
    for ref in refs:
        node: Any = document
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
        assert node, ref


def test_service_output_validates_against_the_document(document: dict[str, Any]) -> None:
    """A body built by `workflow_cancelled()` passes the model (extra fields forbidden) and the schema."""
    for trigger in (
        {"event_id": "ev-1", "event_type": "campaign-ended", "campaign_id": "cmp_1"},
        {"event_id": "ev-2", "event_type": "complaint-received", "complaint_id": "cpl_1"},
    ):
        _, body = workflow_cancelled(
            workflow_id="wf_1",
            outcome="already_terminal",
            status="completed",
            trigger=trigger,
            source="urn:workflow-canceller",
            confirmed_at=datetime.now(UTC),
        )
        WorkflowCancelled.model_validate_json(body)
        _validator(document, "WorkflowCancelled").validate(orjson.loads(body))


def test_input_examples_validate_and_bad_ones_do_not(document: dict[str, Any]) -> None:
    """The test suite's sample inputs pass the documented schemas; a bad workflow id does not."""
    _validator(document, "CampaignEnded").validate(campaign(["wf_1", "wfl_2"]))
    _validator(document, "ComplaintReceived").validate(complaint(["workflow_3"]))
    with pytest.raises(jsonschema.ValidationError):
        _validator(document, "CampaignEnded").validate(campaign(["bad id!"]))


def test_dead_letter_headers_are_documented(document: dict[str, Any]) -> None:
    """The DLQ message documents the reason, error and attempts headers the contract names."""
    headers = document["components"]["messages"]["deadLettered"]["headers"]
    assert headers["properties"]["x-canceller-reason"]["enum"] == ["invalid", "permanent", "exhausted"]
    assert {"x-canceller-reason", "x-canceller-error", "x-canceller-attempts"} <= set(headers["required"])


@pytest.mark.timeout(180)
def test_document_is_valid_asyncapi_3(tmp_path: Path) -> None:
    """scripts/validate-docs.sh passes, and the same schema rejects a broken copy."""
    env = {**os.environ, "VENV": str(ROOT / ".venv")}
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "validate-docs.sh")],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid AsyncAPI 3.0.0" in result.stdout

    broken = yaml.safe_load(DOC.read_text())
    broken["operations"]["consumeCampaignEnded"]["action"] = "consume"  # only send / receive exist
    copy = tmp_path / "broken.yaml"
    copy.write_text(yaml.safe_dump(broken))
    cache = os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))
    schema = Path(
        os.environ.get("DOCS_TOOLS_CACHE", f"{cache}/workflow-canceller/docs-tools"),
        "asyncapi/node_modules/@asyncapi/specs/schemas/3.0.0-without-$id.json",
    )
    check = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "check-jsonschema"), "--schemafile", str(schema), str(copy)],
        capture_output=True,
        check=False,
    )
    assert check.returncode != 0
