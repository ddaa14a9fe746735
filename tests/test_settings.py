"""Settings: the contract's defaults, values from the environment, and each bad value named in one line."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from service.config import Settings, describe_errors
from tests.support import settings


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


@pytest.mark.parametrize(
    "url",
    [
        "https://api.dialnexa.com/v1",
        "http://127.0.0.1:8089/v1",
        "http://127.3.2.1/v1",
        "http://localhost:8089/v1",
        "http://[::1]:8089/v1",
    ],
)
def test_dialnexa_url_https_or_loopback_is_accepted(url: str) -> None:
    """https:// anywhere, plain http:// only to this machine (127.0.0.0/8, ::1, localhost)."""
    assert str(settings(dialnexa_base_url=url).dialnexa_base_url).startswith(url.removesuffix("/v1"))


@pytest.mark.parametrize(
    "url", ["http://api.dialnexa.com/v1", "http://simulator:8080/v1", "http://10.0.0.8/v1", "http://[::2]/v1"]
)
def test_plain_http_elsewhere_is_a_configuration_error(url: str) -> None:
    """Plain http:// to another host is refused, naming the variable and the override."""
    with pytest.raises(ValidationError) as caught:
        settings(dialnexa_base_url=url)
    (line,) = describe_errors(caught.value)
    assert line.startswith("CANCELLER_DIALNEXA_BASE_URL: must be an https:// URL")
    assert "CANCELLER_DIALNEXA_ALLOW_INSECURE_HTTP=true" in line
    allowed = settings(dialnexa_base_url=url, dialnexa_allow_insecure_http=True)
    assert allowed.dialnexa_base_url.scheme == "http"


def test_insecure_override_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """CANCELLER_DIALNEXA_ALLOW_INSECURE_HTTP=true lets a compose stack reach its simulator by name."""
    monkeypatch.setenv("CANCELLER_DIALNEXA_API_KEY", "k:s")
    monkeypatch.setenv("CANCELLER_DIALNEXA_BASE_URL", "http://dialnexa-simulator:8089/v1")
    with pytest.raises(ValidationError):
        Settings(_env_file=None)  # type: ignore[call-arg]
    monkeypatch.setenv("CANCELLER_DIALNEXA_ALLOW_INSECURE_HTTP", "true")
    assert Settings(_env_file=None).dialnexa_allow_insecure_http  # type: ignore[call-arg]
