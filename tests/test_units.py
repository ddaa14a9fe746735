"""Small pure pieces: settings, log redaction, retry headers, delay-queue choice."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
import structlog
from pydantic import ValidationError

from service import logs
from service.config import Settings, describe_errors
from service.retries import decode_done, encode_done
from service.topology import delay_queue_for


def settings(**values: Any) -> Settings:
    """Settings from keyword arguments only (no environment file)."""
    return Settings(_env_file=None, **{"dialnexa_api_key": "k:s", **values})


def test_defaults_match_the_contract() -> None:
    """Defaults of contract section 6."""
    s = settings()
    assert s.amqp_url.get_secret_value() == "amqp://guest:guest@localhost:5672/"
    assert str(s.dialnexa_base_url) == "https://api.dialnexa.com/v1"
    assert (s.http_port, s.retry_delays, s.log_level, s.log_format) == (
        8080, (1.0, 5.0, 30.0, 120.0, 600.0), "INFO", "json",
    )  # fmt: skip


def test_retry_delays_from_text(monkeypatch: pytest.MonkeyPatch) -> None:
    """CANCELLER_RETRY_DELAYS is a comma list of seconds."""
    monkeypatch.setenv("CANCELLER_RETRY_DELAYS", "0.5, 2,10")
    monkeypatch.setenv("CANCELLER_DIALNEXA_API_KEY", "k:s")
    assert Settings(_env_file=None).retry_delays == (0.5, 2.0, 10.0)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("values", "line"),
    [
        ({"dialnexa_api_key": "no-colon"}, "CANCELLER_DIALNEXA_API_KEY: must be of the form key_id:secret"),
        ({"amqp_url": "http://host/"}, "CANCELLER_AMQP_URL: must be an amqp:// or amqps:// URL"),
        ({"retry_delays": "1,-1"}, "CANCELLER_RETRY_DELAYS: each delay must be between"),
        ({"log_level": "loud"}, "CANCELLER_LOG_LEVEL:"),
        ({"dialnexa_base_url": "ftp://x"}, "CANCELLER_DIALNEXA_BASE_URL:"),
    ],
)
def test_bad_values_are_named_without_echoing_secrets(values: dict[str, Any], line: str) -> None:
    """Each problem is one line naming its variable; secret values are not repeated."""
    with pytest.raises(ValidationError) as caught:
        settings(**values)
    (text,) = describe_errors(caught.value)
    assert text.startswith(line)
    assert "no-colon" not in text and "http://host" not in text


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


def test_done_header_round_trip() -> None:
    """The settled-index bitmap survives encoding; a header for another body is ignored."""
    done = frozenset({0, 3, 999})
    header = encode_done(done, 1000)
    assert decode_done(header, 1000) == done
    assert decode_done(header.encode(), 1000) == done
    assert decode_done(header, 999) == frozenset()
    assert decode_done("junk", 5) == frozenset()
    assert decode_done(None, 5) == frozenset()


def test_delay_queue_choice() -> None:
    """The shortest delay queue that waits long enough, else the longest."""
    s = settings(retry_delays="5,1,30,5")
    assert delay_queue_for(s, 0.5).endswith(".1000ms")
    assert delay_queue_for(s, 5).endswith(".5000ms")
    assert delay_queue_for(s, 6).endswith(".30000ms")
    assert delay_queue_for(s, 999).endswith(".30000ms")
