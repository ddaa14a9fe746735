"""Small pure pieces: settings, log redaction, retry headers, delay-queue choice."""

from __future__ import annotations

import gc
import io
import json
import platform
from pathlib import Path
from typing import Any

import pytest
import structlog
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from service.__main__ import main
from service.app import GC_GEN0_THRESHOLD, settle_gc
from service.config import Settings, describe_errors, secret_values
from service.observe import logs
from service.observe.metrics import Metrics, version
from service.retry import decode_done, delay_queue_for, encode_done


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
    """The shortest delay queue that waits long enough, else the longest, saying it is too short."""
    s = settings(retry_delays="5,1,30,5")
    assert delay_queue_for(s.retry_delays, s.delay_queue_name, 0.5) == (s.delay_queue_name(1), True)
    assert delay_queue_for(s.retry_delays, s.delay_queue_name, 5) == (s.delay_queue_name(5), True)
    assert delay_queue_for(s.retry_delays, s.delay_queue_name, 6) == (s.delay_queue_name(30), True)
    assert delay_queue_for(s.retry_delays, s.delay_queue_name, 999) == (s.delay_queue_name(30), False)


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


def test_secret_values_cover_every_written_form() -> None:
    """The redactor learns the key, its secret, and the broker password as written and as decoded."""
    values = secret_values(
        settings(dialnexa_api_key="kid:s3cr3t", amqp_url="amqps://svc:p%40ss%2Fword@broker.example.test/")
    )
    assert {"kid:s3cr3t", "s3cr3t", "p%40ss%2Fword", "p@ss/word"} <= set(values)


def test_settle_gc_freezes_start_up_objects_and_raises_the_young_threshold() -> None:
    """After start-up the collector skips what exists by then and collects generation 0 less often."""
    before = gc.get_threshold()
    gc.unfreeze()  # an in-process worker run earlier in the session may have settled it already
    gc.set_threshold(700, before[1], before[2])  # CPython's default
    try:
        assert gc.get_freeze_count() == 0
        settle_gc()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (GC_GEN0_THRESHOLD, before[1], before[2])
        assert GC_GEN0_THRESHOLD > 700
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_version_is_printed_and_exported(capsys: pytest.CaptureFixture[str]) -> None:
    """`workflow-canceller --version` prints the installed version; `canceller_build_info` carries it."""

    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"workflow-canceller {version()}"
    assert version() != "unknown"
    registry = CollectorRegistry()
    Metrics.build(registry)
    assert (
        registry.get_sample_value(
            "canceller_build_info", {"version": version(), "python": platform.python_version()}
        )
        == 1.0
    )
    assert (Path(__file__).parent.parent / "service" / "py.typed").is_file()
