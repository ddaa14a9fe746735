"""Settings: read from `CANCELLER_*` environment variables (and a `.env` file), one class per kind
of process: `CommonSettings` (every command), `Settings` (the worker: DialNexa's key and calling
it), `WebhookSettings` (`sign`) and `IngressSettings` (the webhook ingress).

Durations carry a unit suffix (`_s`). Secrets are `SecretStr` from end to end: the API key and the
broker URL (it holds the broker password) are only unwrapped where they are used.
"""

from __future__ import annotations

import base64
import binascii
import importlib.util
import ipaddress
import ssl
from pathlib import Path
from typing import Annotated, Literal, Self
from urllib.parse import unquote, urlsplit

from pydantic import (
    AnyUrl,
    Field,
    FilePath,
    SecretStr,
    TypeAdapter,
    UrlConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .core.events import WORKFLOW_ID_PATTERN

ENV_PREFIX = "CANCELLER_"

AmqpUrl = Annotated[AnyUrl, UrlConstraints(allowed_schemes=["amqp", "amqps"], host_required=True)]
HttpUrl = Annotated[AnyUrl, UrlConstraints(allowed_schemes=["http", "https"], host_required=True)]
PositiveSeconds = Annotated[float, Field(gt=0, le=86_400)]
_AMQP_URL: TypeAdapter[AnyUrl] = TypeAdapter(AmqpUrl)


class CommonSettings(BaseSettings):
    """What every command reads: the broker, names, logging, tuning. Maps to `CANCELLER_<FIELD>`.

    The operator commands (`dlq`, `publish`) and the webhook ingress use this; the worker's
    `Settings` adds DialNexa's key and everything about calling it.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    # --- docs/contract.md section 6 ---------------------------------------------------------
    amqp_url: SecretStr = SecretStr("amqp://guest:guest@localhost:5672/")
    dialnexa_base_url: HttpUrl = AnyUrl("https://api.dialnexa.com/v1")
    # Plain http:// to DialNexa is refused unless the host is loopback or this is set (a simulator
    # on another host of a local stack): the API key travels in every request.
    dialnexa_allow_insecure_http: bool = False
    http_port: int = Field(default=8080, ge=1, le=65_535)
    http_host: str = "0.0.0.0"  # noqa: S104  # the probes and Prometheus reach the pod from outside
    retry_delays: Annotated[tuple[float, ...], NoDecode] = (1.0, 5.0, 30.0, 120.0, 600.0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] = "json"

    # --- capacity -----------------------------------------------------------------------------
    # At most this many DialNexa requests in flight per process. At the observed limit (150 per
    # 60 s) and a few hundred ms per call one or two are busy (Little's law); 16 leaves room for
    # slow answers and a larger key without letting a burst outrun the pacer. Each input queue's
    # prefetch is twice this, so the next messages are at hand while the current ones publish.
    concurrency: int = Field(default=16, ge=1, le=1_000)
    # In-flight slots only complaint work may take; campaign work may use all the others.
    complaint_reserved_slots: int = Field(default=1, ge=0)
    # Share of every rate-limit window that campaign work leaves to complaints.
    complaint_reserved_budget: float = Field(default=0.05, ge=0, le=0.5)
    # Optional static cap on DialNexa requests per second per process (both lanes).
    dialnexa_max_rps: float | None = Field(default=None, gt=0)
    # Workflows known terminal (2xx or 409) are not called again for this long. It must outlive a
    # message's hold and its longest retry delay (checked below), so a retried or continued message
    # still finds what the previous delivery learned.
    terminal_cache_size: int = Field(default=20_000, ge=0, le=10_000_000)
    terminal_cache_ttl_s: PositiveSeconds = 1_800.0
    # Kept so existing environments still start: there is one HTTP path (aiohttp, chosen by
    # measurement, docs/performance.md); the other two values are accepted and logged as ignored.
    http_transport: Literal["aiohttp", "httpx-aiohttp", "httpx"] = "aiohttp"
    # uvloop measured 0-6 % faster here, within the run-to-run spread: asyncio's own loop is the
    # default, and uvloop needs the `uvloop` extra installed (`pip install workflow-canceller[uvloop]`).
    event_loop: Literal["uvloop", "asyncio"] = "asyncio"
    max_body_bytes: int = Field(default=512 * 1024, ge=1_024, le=64 * 1024 * 1024)

    # --- DialNexa calls -----------------------------------------------------------------------
    http_connect_timeout_s: PositiveSeconds = 5.0
    http_read_timeout_s: PositiveSeconds = 15.0
    # Quick in-process retries of one call before the message goes back through the broker.
    call_attempts: int = Field(default=3, ge=1, le=20)
    call_retry_budget_s: PositiveSeconds = 30.0
    call_backoff_initial_s: PositiveSeconds = 0.2
    call_backoff_max_s: PositiveSeconds = 5.0
    # A 429 whose Retry-After is longer than this is retried through the broker instead.
    max_retry_after_wait_s: float = Field(default=30.0, ge=0, le=3_600)
    # Retry-After and X-RateLimit-Reset are believed up to this long: a longer claim (a proxy's
    # `1e9`, a date in 2099) is taken as this. DialNexa's window is 60 s; 10 minutes is ten of them.
    max_rate_limit_wait_s: PositiveSeconds = 600.0
    # The longest a delivery is held unacked. RabbitMQ closes the channel of a consumer that holds
    # one past `consumer_timeout` (30 minutes by default, often set lower) and every message on it
    # comes back. 5 minutes is a sixth of the default: room for a lower broker setting, and a
    # crashed pod's redelivered messages redo at most 5 minutes of calls (about 700 at DialNexa's
    # 150 per 60 s). A message not finished by then is handed on to a continuation copy that
    # carries what is done; that costs one confirmed publish per held message per 5 minutes.
    max_hold_s: float = Field(default=300.0, ge=1, le=86_400)
    # The workflow id read to check whether a rejected API key works again (404 means it does).
    auth_probe_workflow_id: str = Field(default="wf_canceller_auth_probe", pattern=WORKFLOW_ID_PATTERN)
    auth_probe_initial_s: PositiveSeconds = 1.0
    auth_probe_max_s: PositiveSeconds = 60.0

    # --- broker -------------------------------------------------------------------------------
    # TLS for amqps:// URLs: the CA bundle that signed the broker's certificate (default: the
    # system's), and a client certificate + key when the broker requires one. Hostnames are
    # always verified against the URL's host.
    amqp_ca_file: FilePath | None = None
    amqp_cert_file: FilePath | None = None
    amqp_key_file: FilePath | None = None
    publish_timeout_s: PositiveSeconds = 10.0
    reconnect_initial_s: PositiveSeconds = 0.5
    reconnect_max_s: PositiveSeconds = 30.0
    drain_timeout_s: PositiveSeconds = 20.0
    # Quorum-queue delivery limit: a message redelivered this often (crash loops) is dead-lettered
    # to the DLQ by the broker, never dropped.
    delivery_limit: int = Field(default=50, ge=1, le=10_000)

    # --- names (docs/contract.md section 2) ----------------------------------------------
    input_exchange: str = "crm.events"
    campaign_queue: str = "workflow-canceller.campaign-ended"
    campaign_routing_key: str = "campaign-ended"
    complaint_queue: str = "workflow-canceller.complaint-received"
    complaint_routing_key: str = "complaint-received"
    output_exchange: str = "workflow.events"
    output_routing_key: str = "workflow-cancelled"
    dead_letter_queue: str = "workflow-canceller.dlq"
    dead_letter_exchange: str = "workflow-canceller.dead-letter"
    requeue_exchange: str = "workflow-canceller.requeue"
    delay_queue_prefix: str = "workflow-canceller.delay"
    event_source: str = "urn:workflow-canceller"

    @field_validator("retry_delays", mode="before")
    @classmethod
    def _split_delays(cls, value: object) -> object:
        """Accept `1,5,30` (the documented form) as well as a sequence."""
        if isinstance(value, str):
            parts = [p.strip() for p in value.split(",")]
            return tuple(p for p in parts if p)
        return value

    @field_validator("retry_delays")
    @classmethod
    def _check_delays(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        """Each delay is between 0.1 s and one day; at most 20 of them."""
        if len(value) > 20:
            raise ValueError("at most 20 delays")
        for delay in value:
            if not 0.1 <= delay <= 86_400:
                raise ValueError(f"each delay must be between 0.1 and 86400 seconds, got {delay:g}")
        return value

    @field_validator("amqp_url")
    @classmethod
    def _check_amqp_url(cls, value: SecretStr) -> SecretStr:
        """The broker URL must be amqp:// or amqps:// with a host (value not shown: it holds a password)."""
        try:
            _AMQP_URL.validate_python(value.get_secret_value())
        except ValidationError:
            raise ValueError("must be an amqp:// or amqps:// URL with a host (value not shown)") from None
        return value

    @model_validator(mode="after")
    def _check_event_loop(self) -> Self:
        """uvloop is an optional extra: say so at start, not with an ImportError."""
        if self.event_loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
            raise ValueError(
                f"{ENV_PREFIX}EVENT_LOOP: uvloop is not installed (install the `uvloop` extra:"
                " pip install 'workflow-canceller[uvloop]')"
            )
        return self

    @model_validator(mode="after")
    def _check_transport_security(self) -> Self:
        """https to DialNexa (or loopback, or the explicit override); TLS files only for amqps://."""
        url = self.dialnexa_base_url
        if url.scheme != "https" and not self.dialnexa_allow_insecure_http and not is_loopback(url.host):
            raise ValueError(
                f"{ENV_PREFIX}DIALNEXA_BASE_URL: must be an https:// URL (plain http:// is accepted only"
                f" for a loopback host or with {ENV_PREFIX}DIALNEXA_ALLOW_INSECURE_HTTP=true)"
            )
        if (self.amqp_cert_file is None) != (self.amqp_key_file is None):
            raise ValueError(
                f"{ENV_PREFIX}AMQP_CERT_FILE / {ENV_PREFIX}AMQP_KEY_FILE: set both (a client certificate"
                " and its key) or neither"
            )
        tls_files = (self.amqp_ca_file, self.amqp_cert_file)
        if any(tls_files) and urlsplit(self.amqp_url.get_secret_value()).scheme != "amqps":
            raise ValueError(
                f"{ENV_PREFIX}AMQP_CA_FILE / {ENV_PREFIX}AMQP_CERT_FILE: TLS files are set but"
                f" {ENV_PREFIX}AMQP_URL is not amqps://"
            )
        if self.amqp_ca_file or self.amqp_cert_file:
            try:
                amqp_ssl_context(self)
            except (ssl.SSLError, OSError) as error:
                raise ValueError(
                    f"{ENV_PREFIX}AMQP_CA_FILE / {ENV_PREFIX}AMQP_CERT_FILE / {ENV_PREFIX}AMQP_KEY_FILE:"
                    f" cannot be loaded ({type(error).__name__}: {error.strerror or error})"
                ) from None
        return self

    @model_validator(mode="after")
    def _check_horizons(self) -> Self:
        """The hold limit leaves time to finish a started call; memory outlives hold and retry."""
        if self.max_hold_s < 2 * self.finish_margin_s:
            raise ValueError(
                f"{ENV_PREFIX}MAX_HOLD_S: must be at least twice the time a started call may still"
                f" take ({self.finish_margin_s:g} s: connect and read timeouts and two publish timeouts)"
            )
        horizon = self.max_hold_s + max(self.retry_delays, default=0.0)
        if self.terminal_cache_size and self.terminal_cache_ttl_s < horizon:
            raise ValueError(
                f"{ENV_PREFIX}TERMINAL_CACHE_TTL_S: must be at least {ENV_PREFIX}MAX_HOLD_S plus the"
                f" longest retry delay ({horizon:g} s), so a continued or retried message still finds it"
            )
        return self

    @property
    def finish_margin_s(self) -> float:
        """The longest a call started just before the deadline, its publish and the settling copy
        can still take: the hold limit stops starting calls this long before it ends."""
        return self.http_connect_timeout_s + self.http_read_timeout_s + 2 * self.publish_timeout_s

    @property
    def start_window_s(self) -> float:
        """How long after delivery a call may still start."""
        return self.max_hold_s - self.finish_margin_s

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        """Accept `debug` as well as `DEBUG`."""
        return value.upper() if isinstance(value, str) else value

    @property
    def reserved_slots(self) -> int:
        """In-flight slots kept for complaints (never all of them)."""
        return min(self.complaint_reserved_slots, self.concurrency - 1)

    @property
    def prefetch(self) -> int:
        """Unacked messages per input queue."""
        return self.concurrency * 2

    @property
    def input_queues(self) -> dict[str, str]:
        """Input queue name -> the routing key it is bound with."""
        return {
            self.campaign_queue: self.campaign_routing_key,
            self.complaint_queue: self.complaint_routing_key,
        }

    def delay_queue_name(self, delay_s: float) -> str:
        """The delay queue that holds messages for *delay_s* seconds."""
        return f"{self.delay_queue_prefix}.{round(delay_s * 1000)}ms"


def is_loopback(host: str | None) -> bool:
    """Whether `host` is this machine: `localhost`, 127.0.0.0/8 or ::1."""
    if not host:
        return False
    name = host.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def amqp_ssl_context(settings: CommonSettings) -> ssl.SSLContext:
    """The TLS context of an amqps:// connection: verified certificate and hostname, TLS 1.2+."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=_path(settings.amqp_ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.amqp_cert_file is not None:
        context.load_cert_chain(settings.amqp_cert_file, _path(settings.amqp_key_file))
    return context


def _path(path: Path | None) -> str | None:
    return str(path) if path is not None else None


class Settings(CommonSettings):
    """Everything the worker (`run`, `check`) can be told: the broker settings and DialNexa's key."""

    dialnexa_api_key: SecretStr

    @field_validator("dialnexa_api_key")
    @classmethod
    def _check_key(cls, value: SecretStr) -> SecretStr:
        """The key is `key_id:secret`; say so without echoing it."""
        key_id, sep, secret = value.get_secret_value().partition(":")
        if not (key_id and sep and secret) or any(c.isspace() for c in value.get_secret_value()):
            raise ValueError("must be of the form key_id:secret (value not shown)")
        return value


# --- webhook secrets: `whsec_<base64>` (Standard Webhooks) ---------------------------------------

SECRET_PREFIX = "whsec_"  # noqa: S105  # the format's prefix, not a secret
SECRETS_VARIABLE = f"{ENV_PREFIX}WEBHOOK_SECRETS"
# Standard Webhooks asks for secrets of 24 to 64 random bytes.
MIN_SECRET_BYTES = 24


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


class IngressSettings(WebhookSettings):
    """Everything `ingress` reads: the common settings, the secrets (required) and its HTTP side."""

    # Several at once while a secret is rotated: a request signed with any of them is accepted.
    webhook_secrets: Annotated[tuple[SecretStr, ...], NoDecode]
    ingress_port: int = Field(default=8081, ge=1, le=65_535)
    ingress_host: str = "0.0.0.0"  # noqa: S104  # CRMs, the probes and Prometheus reach the pod from outside
    # Told to senders with every 503.
    ingress_retry_after_s: int = Field(default=5, ge=1, le=3_600)
    # webhook-ids remembered for replay detection (per process, for twice the signature tolerance).
    webhook_replay_cache_size: int = Field(default=100_000, ge=0, le=10_000_000)

    @field_validator("webhook_secrets")
    @classmethod
    def _need_one(cls, value: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        """An ingress without a secret could verify nothing."""
        if not value:
            raise ValueError("at least one whsec_ secret is required")
        return value


def secret_values(settings: CommonSettings) -> list[str]:
    """Every secret a settings object holds, for the log redactor: `SecretStr` fields (and the
    secret half of a `key_id:secret` key), and the broker password inside the broker URL."""
    values: list[str] = []
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        items = value if isinstance(value, tuple | list) else (value,)
        for item in items:
            if isinstance(item, SecretStr):
                raw = item.get_secret_value()
                values += [raw, raw.partition(":")[2], raw.removeprefix("whsec_")]
    password = urlsplit(settings.amqp_url.get_secret_value()).password or ""
    values += [password, unquote(password)]  # as written in the URL, and as sent to the broker
    return list(dict.fromkeys(v for v in values if v))


def describe_errors(error: ValidationError) -> list[str]:
    """One line per problem, naming the environment variable; input values are never echoed."""
    lines = []
    for item in error.errors(include_input=False, include_url=False):
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "missing":
            message = "required but not set"
        if not item["loc"] and message.startswith(ENV_PREFIX):
            lines.append(message)  # a check across fields names its variables itself
            continue
        field = str(item["loc"][0]) if item["loc"] else "?"
        lines.append(f"{ENV_PREFIX}{field.upper()}: {message}")
    return lines
