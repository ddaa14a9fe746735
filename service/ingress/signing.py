"""Standard Webhooks signatures, without I/O: verifying a request and signing one (`sign`).

`webhook-signature` holds one or more space-separated `v1,<base64 HMAC-SHA256>` over
`"{webhook-id}.{webhook-timestamp}.{body}"`, keyed with the bytes of a `whsec_<base64>` secret
(`service.config.secret_key`). The `standardwebhooks` package computes and compares the HMAC (in
constant time); this module checks the headers first so that every failure has a bounded reason,
and turns anything the package raises on malformed input into a failed verification.

Also here: the `sign` command, which prints the headers (or a whole curl command) an operator
needs to send a signed request by hand.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
import time
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import SecretStr
from standardwebhooks import Webhook, WebhookVerificationError

from ..cli import EXIT_OK, EXIT_USAGE
from ..config import SECRETS_VARIABLE, WebhookSettings, parse_secrets, secret_key
from .cloudevents import STRUCTURED

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
