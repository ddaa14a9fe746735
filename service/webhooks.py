"""Inbound webhooks, without I/O: Standard Webhooks signatures and the CloudEvents HTTP binding.

Signatures follow Standard Webhooks: `webhook-signature` holds one or more space-separated
`v1,<base64 HMAC-SHA256>` over `"{webhook-id}.{webhook-timestamp}.{body}"`, keyed with the bytes of a
`whsec_<base64>` secret. The `standardwebhooks` package computes and compares the HMAC (in constant
time); this module checks the headers first so that every failure has a bounded reason, and turns
anything the package raises on malformed input into a failed verification.

Events arrive in either CloudEvents HTTP mode and leave as the structured JSON form the worker reads:
structured mode is passed on byte for byte, binary mode (`ce-*` headers, the data as the body) is
rebuilt into one JSON object.

Also here: the `CANCELLER_WEBHOOK_SECRETS` setting and the `sign` command, which prints the headers
(or a whole curl command) an operator needs to send a signed request by hand.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import os
import re
import shlex
import sys
import time
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote

import orjson
from pydantic import SecretStr, field_validator
from pydantic_settings import NoDecode
from standardwebhooks import Webhook, WebhookVerificationError

from .config import ENV_PREFIX, CommonSettings
from .events import MEDIA_TYPE_SHAPE, InvalidEvent

SECRET_PREFIX = "whsec_"  # noqa: S105  # the format's prefix, not a secret
SECRETS_VARIABLE = f"{ENV_PREFIX}WEBHOOK_SECRETS"
EXIT_OK = 0
EXIT_USAGE = 2
# Standard Webhooks asks for secrets of 24 to 64 random bytes.
MIN_SECRET_BYTES = 24
# How far `webhook-timestamp` may be from our clock, either way (the package checks the same 5 min).
TOLERANCE_S = 300
HEADER_ID = "webhook-id"
HEADER_TIMESTAMP = "webhook-timestamp"
HEADER_SIGNATURE = "webhook-signature"

SignatureFailure = Literal["missing_header", "malformed_header", "stale_timestamp", "no_match"]
SIGNATURE_FAILURES: tuple[SignatureFailure, ...] = (
    "missing_header",
    "malformed_header",
    "stale_timestamp",
    "no_match",
)

_WEBHOOK_ID = re.compile(r"[\x21-\x7e]{1,256}")  # printable ASCII, no spaces: it ends up in a header
_TIMESTAMP = re.compile(r"\d{1,12}")
_MAX_SIGNATURE_HEADER = 4096

STRUCTURED = "application/cloudevents+json"
JSON = "application/json"
BATCH = "application/cloudevents-batch+json"
Mode = Literal["structured", "binary"]
_ATTRIBUTE_NAME = re.compile(r"[a-z0-9]{1,64}")
_NOT_HEADER_ATTRIBUTES = frozenset({"data", "data_base64", "datacontenttype"})


# ------------------------------------------------------------------------------------------------
# secrets


def secret_key(secret: str) -> bytes:
    """The key bytes of a `whsec_<base64>` secret; `ValueError` (never showing the value) if malformed."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"must start with {SECRET_PREFIX}")
    payload = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(payload + "=" * (-len(payload) % 4), validate=True)
    except binascii.Error:
        raise ValueError(f"is not base64 after {SECRET_PREFIX}") from None
    if len(key) < MIN_SECRET_BYTES:
        raise ValueError(f"decodes to {len(key)} bytes; at least {MIN_SECRET_BYTES} are required")
    return key


def split_secrets(value: object) -> object:
    """`whsec_a,whsec_b` (the documented form) as a tuple; blanks around and between are dropped."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


def parse_secrets(text: str) -> tuple[SecretStr, ...]:
    """Comma-separated secrets, each checked (`ValueError` naming the entry, never its value)."""
    return check_secrets(tuple(SecretStr(part.strip()) for part in text.split(",") if part.strip()))


def check_secrets(secrets: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
    """Each secret is well-formed; the error names its position, never its value."""
    for position, secret in enumerate(secrets, start=1):
        try:
            secret_key(secret.get_secret_value())
        except ValueError as error:
            raise ValueError(f"entry {position} of {len(secrets)} {error} (value not shown)") from None
    return secrets


class WebhookSettings(CommonSettings):
    """What `sign` reads: the common settings and, optionally, the webhook secrets."""

    # Comma-separated `whsec_<base64>` secrets; several at once while one is rotated.
    webhook_secrets: Annotated[tuple[SecretStr, ...], NoDecode] = ()

    @field_validator("webhook_secrets", mode="before")
    @classmethod
    def _split_secrets(cls, value: object) -> object:
        """Accept `whsec_a,whsec_b` (the documented form) as well as a sequence."""
        return split_secrets(value)

    @field_validator("webhook_secrets")
    @classmethod
    def _check_secrets(cls, value: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        """Each secret is `whsec_` + base64 of at least 24 bytes; values are never shown."""
        return check_secrets(value)


# ------------------------------------------------------------------------------------------------
# signatures


class SignatureError(Exception):
    """The request is not signed by a configured secret; `reason` is one of `SIGNATURE_FAILURES`."""

    def __init__(self, reason: SignatureFailure, detail: str) -> None:
        super().__init__(detail)
        self.reason: SignatureFailure = reason
        self.detail = detail


class Verifier:
    """Checks Standard Webhooks signatures against every configured secret (rotation: any may match)."""

    def __init__(self, secrets: Iterable[SecretStr]) -> None:
        self._hooks = tuple(Webhook(secret_key(s.get_secret_value())) for s in secrets)
        if not self._hooks:
            raise ValueError("at least one webhook secret is required")

    def verify(self, body: bytes, headers: Mapping[str, str], now_s: float) -> str:
        """Return the verified `webhook-id`, or raise `SignatureError`."""
        webhook_id, timestamp, signature = (
            headers.get(HEADER_ID, ""),
            headers.get(HEADER_TIMESTAMP, ""),
            headers.get(HEADER_SIGNATURE, ""),
        )
        if not (webhook_id and timestamp and signature):
            raise SignatureError(
                "missing_header", f"{HEADER_ID}, {HEADER_TIMESTAMP} and {HEADER_SIGNATURE} are required"
            )
        _check_format(webhook_id, timestamp, signature)
        if abs(now_s - int(timestamp)) > TOLERANCE_S:
            raise SignatureError(
                "stale_timestamp", f"{HEADER_TIMESTAMP} is more than {TOLERANCE_S} seconds from now"
            )
        signed = {HEADER_ID: webhook_id, HEADER_TIMESTAMP: timestamp, HEADER_SIGNATURE: signature}
        if not any(_matches(hook, body, signed) for hook in self._hooks):
            raise SignatureError("no_match", "no signature matches a configured secret")
        return webhook_id


def _check_format(webhook_id: str, timestamp: str, signature: str) -> None:
    """Headers the package would choke on (or that cannot travel on) are rejected up front."""
    if not _WEBHOOK_ID.fullmatch(webhook_id):
        raise SignatureError("malformed_header", f"{HEADER_ID} must be 1-256 printable ASCII characters")
    if not _TIMESTAMP.fullmatch(timestamp):
        raise SignatureError("malformed_header", f"{HEADER_TIMESTAMP} must be Unix time in whole seconds")
    if len(signature) > _MAX_SIGNATURE_HEADER:
        raise SignatureError("malformed_header", f"{HEADER_SIGNATURE} is too long")


def _matches(hook: Webhook, body: bytes, headers: dict[str, str]) -> bool:
    """The package's verdict; its errors on malformed input (bad base64, a signature without a comma,
    a body that is not UTF-8: ValueError and its subclasses binascii.Error, UnicodeDecodeError)
    count as no match."""
    try:
        hook.verify(body, headers, json_parse=False)
    except (WebhookVerificationError, ValueError):
        return False
    return True


def sign(secret: SecretStr, webhook_id: str, timestamp_s: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers for `body` (which must be UTF-8, as JSON is)."""
    hook = Webhook(secret_key(secret.get_secret_value()))
    signature = hook.sign(webhook_id, datetime.fromtimestamp(timestamp_s, UTC), body.decode("utf-8"))
    return {HEADER_ID: webhook_id, HEADER_TIMESTAMP: str(timestamp_s), HEADER_SIGNATURE: signature}


# ------------------------------------------------------------------------------------------------
# the CloudEvents HTTP binding


class UnsupportedMediaType(Exception):
    """The request's content type is not one this endpoint takes; the text says which are."""


def mode_of(content_type: str | None, headers: Mapping[str, str]) -> Mode:
    """Structured or binary mode, from the media type (and a `ce-specversion` header for JSON)."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type == STRUCTURED:
        return "structured"
    if media_type == JSON:
        return "binary" if "ce-specversion" in headers else "structured"
    if media_type == BATCH:
        raise UnsupportedMediaType("batched CloudEvents are not accepted: send one event per request")
    if not media_type:
        shown = "missing"
    else:  # echoed only when shaped like a media type: the detail goes back to the sender and logs
        shown = repr(media_type) if MEDIA_TYPE_SHAPE.fullmatch(media_type) else "(value not shown)"
    raise UnsupportedMediaType(f"content type {shown}: send {STRUCTURED} or {JSON}")


def structured_body(mode: Mode, body: bytes, headers: Iterable[tuple[str, str]]) -> bytes:
    """The event in structured JSON form: the body itself, or rebuilt from a binary-mode request."""
    if mode == "structured":
        return body
    return from_binary(headers, body)


def from_binary(headers: Iterable[tuple[str, str]], body: bytes) -> bytes:
    """One structured event from `ce-*` headers (percent-decoded) and a JSON body as its data.

    Raises `InvalidEvent` with a value-free reason; the result still goes through `events.parse`.
    """
    envelope: dict[str, Any] = {}
    for name, value in headers:
        lower = name.lower()
        if not lower.startswith("ce-"):
            continue
        attribute = lower.removeprefix("ce-")
        if not _ATTRIBUTE_NAME.fullmatch(attribute) or attribute in _NOT_HEADER_ATTRIBUTES:
            raise InvalidEvent(f"binary mode: header {name[:70]!r} is not a CloudEvents attribute")
        if attribute in envelope:
            raise InvalidEvent(f"binary mode: header {name[:70]!r} appears more than once")
        envelope[attribute] = _percent_decoded(name, value)
    try:
        envelope["data"] = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidEvent("binary mode: the body (the event's data) is not JSON") from None
    envelope["datacontenttype"] = JSON
    return orjson.dumps(envelope)


def _percent_decoded(name: str, value: str) -> str:
    """Header values are percent-encoded UTF-8 (CloudEvents HTTP binding, 3.1.3.2)."""
    try:
        return unquote(value, errors="strict")
    except UnicodeDecodeError:
        raise InvalidEvent(f"binary mode: header {name[:70]!r} is not percent-encoded UTF-8") from None


# ------------------------------------------------------------------------------------------------
# the sign command


def sign_arguments(parser: argparse.ArgumentParser) -> None:
    """`sign --file PATH [--secret-env VAR] [--id ID] [--timestamp S] [--curl URL]`: no secret on the line."""
    parser.add_argument("--file", required=True, help="the exact request body to sign ('-': standard input)")
    parser.add_argument(
        "--secret-env",
        metavar="VAR",
        default=SECRETS_VARIABLE,
        help=f"environment variable holding the secret; the first of a comma-separated list is used "
        f"(default {SECRETS_VARIABLE}, also read from .env)",
    )
    parser.add_argument("--id", dest="webhook_id", help="webhook-id (default: a new random msg_ id)")
    parser.add_argument("--timestamp", type=int, help="webhook-timestamp, Unix seconds (default: now)")
    parser.add_argument("--curl", metavar="URL", help="print a complete curl command for URL instead")
    parser.add_argument("--content-type", default=STRUCTURED, help="for --curl (default %(default)s)")


def run_sign(args: argparse.Namespace, settings: WebhookSettings) -> int:
    """Print the three signature headers for the body (or a curl command line that sends it)."""
    try:
        secret = _signing_secret(args.secret_env, settings)
        body = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
        headers = sign(
            secret,
            args.webhook_id or f"msg_{uuid.uuid4().hex}",
            args.timestamp if args.timestamp is not None else int(time.time()),
            body,
        )
    except (ValueError, OSError) as error:  # UnicodeDecodeError is a ValueError
        print(f"sign: {_sign_error(error)}", file=sys.stderr)
        return EXIT_USAGE
    if args.curl:
        print(_curl(args.curl, args.content_type, headers, args.file))
    else:
        print("\n".join(f"{name}: {value}" for name, value in headers.items()))
    return EXIT_OK


def _signing_secret(variable: str, settings: WebhookSettings) -> SecretStr:
    """The first secret in `variable` (CANCELLER_WEBHOOK_SECRETS comes validated from the settings)."""
    if variable == SECRETS_VARIABLE:
        secrets = settings.webhook_secrets
    else:
        try:
            secrets = parse_secrets(os.environ.get(variable, ""))
        except ValueError as error:
            raise ValueError(f"{variable}: {error}") from None
    if not secrets:
        raise ValueError(f"{variable}: required but not set")
    return secrets[0]


def _sign_error(error: BaseException) -> str:
    if isinstance(error, UnicodeDecodeError):
        return "the body is not UTF-8"
    if isinstance(error, OSError):
        return f"cannot read the body: {error.strerror or error}"
    return str(error)


def _curl(url: str, content_type: str, headers: dict[str, str], file: str) -> str:
    """A copy-and-paste curl command line (the signature is not a secret: it is bound to this body)."""
    parts = ["curl", "-sS", "-i", "-X", "POST", url, "-H", f"content-type: {content_type}"]
    for name, value in headers.items():
        parts += ["-H", f"{name}: {value}"]
    parts += ["--data-binary", f"@{file}"]
    return shlex.join(parts)
