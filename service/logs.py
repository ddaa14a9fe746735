"""structlog configuration: one JSON object per line on stdout (or a console format on request).

Log event names are fixed dotted strings (`event.settled`, `broker.connected`, ...), never
f-strings. Two guards keep personal data and secrets out of every line, at every level:
known-sensitive keys are dropped, and the values of the given secrets are masked wherever they
appear. Library loggers (aio-pika, aiormq, httpx, httpcore) stay at WARNING or above even at DEBUG,
because their debug output can carry message bodies and request headers.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, Literal

import orjson
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

SENSITIVE_KEYS = frozenset({"phone_number", "authorization", "api_key", "amqp_url", "password"})
MASK = "[redacted]"
_NOISY_LIBRARIES = ("aio_pika", "aiormq", "pamqp", "httpx", "httpcore", "aiohttp.access")


class Redactor:
    """Drops sensitive keys and masks secret values anywhere in an event dict."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self._secrets = tuple(s for s in secrets if len(s) >= 4)

    def __call__(self, _logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
        return self._clean(event_dict)

    def _clean(self, mapping: MutableMapping[str, Any]) -> EventDict:
        cleaned: EventDict = {}
        for key, value in mapping.items():
            if key.lower() in SENSITIVE_KEYS:
                cleaned[key] = MASK
            elif isinstance(value, str):
                cleaned[key] = self._mask(value)
            elif isinstance(value, dict):
                cleaned[key] = self._clean(value)
            else:
                cleaned[key] = value
        return cleaned

    def _mask(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text


def _dumps(obj: Any, **_kwargs: Any) -> str:
    """orjson: several times faster than the standard library on the per-message summary line."""
    return orjson.dumps(obj, default=str).decode()


def configure(
    level: str,
    fmt: Literal["json", "console"],
    secrets: Iterable[str] = (),
    stream: Any = None,
) -> None:
    """Configure structlog and route the standard library's logging through the same renderer."""
    numeric = logging.getLevelName(level)
    redactor = Redactor(secrets)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Processor = (
        structlog.processors.JSONRenderer(serializer=_dumps)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    out = stream if stream is not None else sys.stdout
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            redactor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                redactor,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    for name in _NOISY_LIBRARIES:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))
