"""The HTTP plumbing under the DialNexa client: one pooled aiohttp session, answers read whole.

The client sees an `HttpSession` (send one request, get an `Answer`) and, for every failure to get
an answer, one `HttpFailure` (a `TransportError` of the core's tree) whose class names the kind:
`ConnectError`, `ReadTimeout`, `RemoteProtocolError`, `NetworkError`. Those names are the
`status_code` label of `canceller_dialnexa_requests_total` for calls that got no answer.

aiohttp is called directly: building httpx's `Request` and `Response` objects per call cost more
CPU than aiohttp's whole request here (docs/performance.md). Tests use the same `HttpSession` seam
with a function from request to answer (`tests/support.py`'s `MockSession`). DialNexa's answers
are a few hundred bytes, so each is read whole.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import aiohttp
from pydantic import SecretStr

from ..core.ports import TransportError


class HttpFailure(TransportError):
    """No usable HTTP answer; `str()` starts with the kind, e.g. `ReadTimeout: ...`."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"{type(self).__name__}: {detail}"[:200])


class ConnectError(HttpFailure):
    """The connection could not be opened (refused, unreachable, TLS failure)."""


class ReadTimeout(HttpFailure):
    """No answer (or no connection from the pool) in time."""


class RemoteProtocolError(HttpFailure):
    """The server closed the connection or sent an unreadable answer."""


class NetworkError(HttpFailure):
    """Any other failure on the wire."""


@dataclass(frozen=True, slots=True)
class Answer:
    """One answer, read whole: what the client needs of it."""

    status_code: int
    headers: Mapping[str, str]  # looked up case-insensitively
    content: bytes
    reason_phrase: str = ""


class HttpSession(Protocol):
    """The one long-lived line to DialNexa that the client sends its requests over."""

    async def request(self, method: str, path: str) -> Answer:
        """Send one request to `path` (relative to the base URL); the answer is read whole.
        Raises an `HttpFailure` when there is no answer."""
        ...

    async def aclose(self) -> None: ...


class AiohttpSession:
    """One pooled aiohttp `ClientSession`, created on first use inside the running loop."""

    def __init__(
        self,
        base_url: str,
        api_key: SecretStr,
        *,
        connect_timeout_s: float,
        read_timeout_s: float,
        max_connections: int,
    ) -> None:
        self._base_url = base_url.rstrip("/") + "/"
        self._headers = {
            "Authorization": f"Bearer {api_key.get_secret_value()}",
            "Accept": "application/json",
            "User-Agent": "workflow-canceller",
        }
        # connect: the wait for a free connection plus connecting; sock_read: between bytes.
        self._timeout = aiohttp.ClientTimeout(
            sock_connect=connect_timeout_s, sock_read=read_timeout_s, connect=read_timeout_s
        )
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=self._max_connections)
        return aiohttp.ClientSession(
            headers=self._headers,  # merged by aiohttp, once per request, with nothing else
            timeout=self._timeout,
            connector=connector,
            skip_auto_headers=("User-Agent",),
        )

    async def request(self, method: str, path: str) -> Answer:
        """Send one request; the whole answer is read before it is returned."""
        session = self._session or self._open()
        self._session = session
        try:
            async with session.request(method, self._base_url + path, allow_redirects=False) as answer:
                body = await answer.read()
        except TimeoutError as error:
            raise ReadTimeout(str(error) or "timed out") from error
        except aiohttp.ClientConnectorError as error:
            raise ConnectError(str(error)) from error
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as error:
            raise RemoteProtocolError(str(error) or "server disconnected") from error
        except aiohttp.ClientError as error:
            raise NetworkError(str(error)) from error
        return Answer(answer.status, answer.headers, body, answer.reason or "")

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
