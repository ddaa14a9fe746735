"""Log redaction: secrets are masked in every form they are written in, personal data never passes."""

from __future__ import annotations

import io
import json

import structlog

from service.config import secret_values
from service.observe import logs
from tests.support import settings


def test_redactor_masks_secrets_and_drops_personal_keys() -> None:
    """Secrets are masked anywhere in a value; phone_number and friends never pass."""
    stream = io.StringIO()
    logs.configure("DEBUG", "json", secrets=["key:hunter22", "hunter22"], stream=stream)
    structlog.get_logger("t").debug(
        "x.y", note="token key:hunter22 here", phone_number="+1555", nested={"a": "hunter22"}
    )
    line = json.loads(stream.getvalue())
    assert "hunter22" not in stream.getvalue()
    assert "+1555" not in stream.getvalue()
    assert line["event"] == "x.y" and line["level"] == "debug"
    logs.configure("INFO", "json")


def test_secret_values_cover_every_written_form() -> None:
    """The redactor learns the key, its secret, and the broker password as written and as decoded."""
    values = secret_values(
        settings(dialnexa_api_key="kid:s3cr3t", amqp_url="amqps://svc:p%40ss%2Fword@broker.example.test/")
    )
    assert {"kid:s3cr3t", "s3cr3t", "p%40ss%2Fword", "p@ss/word"} <= set(values)
