"""structlog configuration: one JSON object per line on stdout (or a console format on request).

Log event names are fixed dotted strings (`event.settled`, `broker.connected`, ...), never
f-strings. Three guards keep personal data and secrets out of every line, at every level and in
exception traces (which are rendered to text before the guards run):

- known-sensitive keys are dropped;
- the values of the given secrets (the API key, its secret half, the broker password as written
  in the URL and decoded) are masked wherever they appear;
- shapes that are secret whatever their value are masked too: credentials inside a URL
  (`scheme://user:password@`), a `Bearer` token, a `whsec_` webhook secret, and phone numbers
  (`+` and 8-15 digits, a bare run of 10-15 digits, or national groups such as `(555) 555-0123`
  and `020 7946 0958`).

Values that are not strings (exceptions, bytes, objects) are turned into text first, so nothing
reaches the renderer unmasked. Library loggers (aio-pika, aiormq, httpx, httpcore) stay at WARNING
or above even at DEBUG, because their debug output can carry message bodies and request headers.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, Literal

import orjson
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from .tracing import add_trace_ids

SENSITIVE_KEYS = frozenset(
    {
        "phone_number",
        "phone",
        "authorization",
        "proxy-authorization",
        "api_key",
        "dialnexa_api_key",
        "amqp_url",
        "password",
        "secret",
        "token",
        "webhook_secret",
        "cookie",
        "set-cookie",
    }
)
MASK = "[redacted]"
# Secret whatever the value: (pattern, replacement), applied to every string after the known secrets.
_SHAPES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\b((?i:[a-z][a-z0-9+.-]*)://)[^/\s:@]*:[^/\s@]*@"), rf"\1{MASK}@"),  # URL credentials
    (re.compile(r"\b(?i:bearer)\s+[A-Za-z0-9._~+/:=-]+"), f"Bearer {MASK}"),
    (re.compile(r"\bwhsec_[A-Za-z0-9+/=_-]+"), MASK),
    (re.compile(r"(?<![\w.+-])\+\d[\d ().-]{6,18}\d(?![\w.])"), MASK),  # +1 555 555 0123, +15555550123
    (re.compile(r"(?<![\w.+-])\d{10,15}(?![\w.])"), MASK),  # 15555550123
    # National formats: (555) 555-0123, 555-555-0123, 555 555 0123, 020 7946 0958. Dates (2-digit
    # groups), times (colons) and addresses (dots) do not have this shape.
    (re.compile(r"(?<![\w.+-])(?:\(\d{2,4}\)|\d{2,4})[ -]\d{3,4}[ -]\d{3,4}(?![\w.])"), MASK),
)
# The pre-check covers every shape above: a run of 8 digits (long numbers, +-prefixed ones pass
# through "+"), or a digit, a separator (`) ` counts as one), 3-4 digits, a separator and 3 more
# digits (the national formats, `(555) 555-0123` and `020 7946 0958` included).
_DIGIT_RUN = re.compile(r"\d{8}|\d[ )-]{1,2}\d{3,4}[ -]\d{3}")


def _may_hold_shape(text: str) -> bool:
    """A cheap test (most strings fail it) before the patterns above run: logging is on the hot path."""
    return (
        "://" in text
        or "+" in text
        or "whsec_" in text
        or "earer" in text
        or "EARER" in text
        or _DIGIT_RUN.search(text) is not None
    )


def short(error: BaseException) -> str:
    """A one-line, bounded description of an error for logs and headers."""
    return f"{type(error).__name__}: {error}"[:200]


def valid_utf8(text: str) -> str:
    """`text` as valid UTF-8: a lone surrogate (say, a truncated emoji in an API's error text) is
    replaced, so neither the JSON renderer nor an AMQP header refuses it."""
    if text.isascii():
        return text
    return text.encode("utf-8", "replace").decode("utf-8")


def mask_shapes(text: str) -> str:
    """`text` with every secret-shaped part (URL credentials, tokens, phone numbers) masked.

    The one definition of those shapes: log lines and the operator commands' output both use it.
    """
    if _may_hold_shape(text):
        for pattern, replacement in _SHAPES:
            text = pattern.sub(replacement, text)
    return text


_NOISY_LIBRARIES = ("aio_pika", "aiormq", "pamqp", "httpx", "httpcore", "aiohttp.access")


class Redactor:
    """Drops sensitive keys and masks secret values anywhere in an event dict."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self._secrets = tuple(s for s in secrets if len(s) >= 4)
        # Most strings logged are a few constants (event names, levels, results): remember them.
        self._mask = functools.lru_cache(maxsize=2048)(self._mask_text)

    def __call__(self, _logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
        return self._clean(event_dict)

    def _clean(self, mapping: MutableMapping[str, Any]) -> EventDict:
        cleaned: EventDict = {}
        for key, value in mapping.items():
            if isinstance(key, str) and key.lower() in SENSITIVE_KEYS:
                cleaned[key] = MASK
            else:
                cleaned[key] = self._value(value)
        return cleaned

    def _value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self._mask(value)
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, dict):
            return self._clean(value)
        if isinstance(value, list | tuple | set | frozenset):
            return [self._value(item) for item in value]
        if isinstance(value, bytes):
            return self._mask(value.decode("utf-8", "replace"))
        return self._mask(str(value))  # exceptions, URLs, SecretStr and other objects: as text

    def _mask_text(self, text: str) -> str:
        text = valid_utf8(text)
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return mask_shapes(text)


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
            add_trace_ids,  # after the redactor: ids are not secrets, and would only fill its cache
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
                add_trace_ids,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    for name in _NOISY_LIBRARIES:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))
