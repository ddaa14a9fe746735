"""AMQPS for real: a TLS-terminating proxy (requiring client certificates) in front of the real broker.

trustme makes a CA, a server certificate and a client certificate; the proxy is an asyncio server
with an `ssl.SSLContext` that forwards bytes to the local RabbitMQ. The machine's RabbitMQ is not
reconfigured: only the proxy speaks TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import pytest
import trustme
from pydantic import ValidationError

from service.broker import connection
from service.config import CommonSettings, describe_errors
from tests.support import BrokerProbe, campaign, wait_until, wf_ids

pytestmark = [pytest.mark.broker, pytest.mark.timeout(60)]


class TlsProxy:
    """Terminates TLS on 127.0.0.1 (client certificate required or not) and forwards to the broker."""

    def __init__(self, context: ssl.SSLContext, upstream: tuple[str, int]) -> None:
        self.context = context
        self.upstream = upstream
        self.port = 0
        self.client_subjects: list[Any] = []  # the verified client certificates' subjects
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> TlsProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peercert")
        self.client_subjects.append(peer.get("subject") if peer else None)
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        self._writers |= {writer, up_writer}
        pipes = [
            asyncio.create_task(self._pipe(reader, up_writer)),
            asyncio.create_task(self._pipe(up_reader, writer)),
        ]
        self._tasks.update(pipes)
        await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        for task in pipes:
            task.cancel()
        for w in (writer, up_writer):
            w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    """The CA that signs the broker's (the proxy's) certificate and the client's."""
    return trustme.CA()


@pytest.fixture(scope="module")
def pki(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """PEM files as an operator would mount them: CA, client certificate + key, a stranger CA."""
    folder = tmp_path_factory.mktemp("pki")
    client = ca.issue_cert("workflow-canceller.example.test", common_name="workflow-canceller")
    files = {
        "ca": folder / "ca.pem",
        "cert": folder / "client.pem",
        "key": folder / "client.key",
        "other_ca": folder / "other-ca.pem",
    }
    ca.cert_pem.write_to_path(str(files["ca"]))
    client.cert_chain_pems[0].write_to_path(str(files["cert"]))
    client.private_key_pem.write_to_path(str(files["key"]))
    trustme.CA().cert_pem.write_to_path(str(files["other_ca"]))
    return files


def server_context(ca: trustme.CA, *, require_client_cert: bool, names: tuple[str, ...]) -> ssl.SSLContext:
    """The proxy's side: a certificate for `names`, client certificates checked against the CA."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    ca.configure_trust(context)
    context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return context


@pytest.fixture
async def start_proxy(ca: trustme.CA, base_amqp_url: str) -> AsyncIterator[Any]:
    """Start TLS proxies to the real broker (`await start_proxy(require_client_cert=..., names=...)`)."""
    parts = urlsplit(base_amqp_url)
    upstream = (parts.hostname or "127.0.0.1", parts.port or 5672)
    proxies: list[TlsProxy] = []

    async def start(require_client_cert: bool = True, names: tuple[str, ...] = ("127.0.0.1",)) -> TlsProxy:
        context = server_context(ca, require_client_cert=require_client_cert, names=names)
        proxy = await TlsProxy(context, upstream).start()
        proxies.append(proxy)
        return proxy

    yield start
    for proxy in proxies:
        await proxy.stop()


def amqps_url(amqp_url: str, port: int) -> str:
    """The test broker's URL (credentials, vhost) rewritten to amqps:// through the proxy."""
    parts = urlsplit(amqp_url)
    netloc = f"{parts.username}:{parts.password}@127.0.0.1:{port}"
    return urlunsplit(parts._replace(scheme="amqps", netloc=netloc))


def tls_settings(url: str, **files: Path) -> CommonSettings:
    """Broker settings for `url` with the given TLS files (amqp_ca_file=..., ...)."""
    return CommonSettings(
        _env_file=None,
        amqp_url=url,
        publish_timeout_s=5,
        **{f"amqp_{name}_file": path for name, path in files.items()},
    )


async def test_connect_with_ca_and_client_certificate(
    start_proxy: Any, pki: dict[str, Path], amqp_url: str
) -> None:
    """With the right CA and a client certificate, `broker.connect` talks AMQP through TLS."""
    proxy = await start_proxy(require_client_cert=True)
    settings = tls_settings(amqps_url(amqp_url, proxy.port), ca=pki["ca"], cert=pki["cert"], key=pki["key"])
    conn = await connection.connect(settings, "tls-test")
    try:
        channel = await conn.channel()
        queue = await channel.declare_queue("", exclusive=True)
        await channel.default_exchange.publish(aio_pika.Message(b"over tls"), routing_key=queue.name)
        message = await queue.get(timeout=5)
        assert message is not None and message.body == b"over tls"
    finally:
        await conn.close()
    (subject,) = proxy.client_subjects  # one connection, with the client certificate the CA signed
    assert (("commonName", "workflow-canceller"),) in subject


async def test_wrong_ca_fails_certificate_verification(
    start_proxy: Any, pki: dict[str, Path], amqp_url: str
) -> None:
    """A CA bundle that did not sign the broker's certificate makes the connection fail verification."""
    proxy = await start_proxy(require_client_cert=True)
    settings = tls_settings(
        amqps_url(amqp_url, proxy.port), ca=pki["other_ca"], cert=pki["cert"], key=pki["key"]
    )
    with pytest.raises(aio_pika.exceptions.AMQPConnectionError, match="certificate verify failed") as caught:
        await connection.connect(settings, "tls-test")
    assert isinstance(caught.value.__cause__, ssl.SSLCertVerificationError)
    assert proxy.client_subjects == []  # the handshake never completed


async def test_hostname_is_verified(start_proxy: Any, pki: dict[str, Path], amqp_url: str) -> None:
    """A certificate for another host name is refused even though the CA is trusted."""
    proxy = await start_proxy(require_client_cert=False, names=("broker.example.test",))
    settings = tls_settings(amqps_url(amqp_url, proxy.port), ca=pki["ca"])
    with pytest.raises(aio_pika.exceptions.AMQPConnectionError, match="IP address mismatch") as caught:
        await connection.connect(settings, "tls-test")
    assert isinstance(caught.value.__cause__, ssl.SSLCertVerificationError)


async def test_missing_client_certificate_is_refused(
    start_proxy: Any, pki: dict[str, Path], amqp_url: str
) -> None:
    """When the broker requires a client certificate, connecting without one fails."""
    proxy = await start_proxy(require_client_cert=True)
    settings = tls_settings(amqps_url(amqp_url, proxy.port), ca=pki["ca"])
    # TLS 1.3 reports the refusal after the client's side of the handshake: the broker hangs up.
    with pytest.raises(aio_pika.exceptions.AMQPConnectionError, match="unexpectedly closed"):
        await connection.connect(settings, "tls-test")
    assert proxy.client_subjects == []  # the proxy's handshake failed: nothing reached the broker


def test_missing_tls_files_are_configuration_errors(tmp_path: Path) -> None:
    """A CA, certificate or key path that does not exist is a configuration error naming the variable."""
    for name in ("ca", "cert", "key"):
        with pytest.raises(ValidationError) as caught:
            tls_settings("amqps://u:p@broker.example.test/", **{name: tmp_path / "absent.pem"})
        lines = describe_errors(caught.value)
        assert any(line.startswith(f"CANCELLER_AMQP_{name.upper()}_FILE:") for line in lines), lines


def test_tls_files_must_match_and_load(pki: dict[str, Path], tmp_path: Path) -> None:
    """A certificate without its key, a key that does not match, or TLS files on amqp:// are refused."""
    cases: list[tuple[str, dict[str, Path], str]] = [
        ("amqps://u:p@h/", {"cert": pki["cert"]}, "set both"),
        ("amqps://u:p@h/", {"cert": pki["cert"], "key": pki["ca"]}, "cannot be loaded"),
        ("amqp://u:p@h/", {"ca": pki["ca"]}, "is not amqps://"),
    ]
    for url, files, expected in cases:
        with pytest.raises(ValidationError) as caught:
            tls_settings(url, **files)
        (line,) = describe_errors(caught.value)
        assert line.startswith("CANCELLER_AMQP_") and expected in line, line
        assert "u:p@" not in line


async def test_worker_runs_end_to_end_over_tls(
    start_proxy: Any, pki: dict[str, Path], amqp_url: str, broker: BrokerProbe, start_worker: Any
) -> None:
    """A real worker connected through the TLS proxy consumes, cancels and publishes as usual."""
    proxy = await start_proxy(require_client_cert=True)
    worker = await start_worker(
        amqp_url=amqps_url(amqp_url, proxy.port),
        amqp_ca_file=pki["ca"],
        amqp_cert_file=pki["cert"],
        amqp_key_file=pki["key"],
    )
    ids = wf_ids(2)
    await broker.publish(campaign(ids))
    await wait_until(lambda: broker.output_ids() == set(ids), what="outputs published over TLS")
    assert proxy.client_subjects  # the worker's connection really went through the proxy
    assert worker.metric("canceller_broker_reconnects_total") == 0
