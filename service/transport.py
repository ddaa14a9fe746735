"""DialNexa requests straight over one aiohttp session: the default HTTP path.

`CANCELLER_HTTP_TRANSPORT=aiohttp`. The client reads its answers as it reads `httpx.Response`s
(status, case-insensitive headers, body, reason) and its failures as httpx's `TransportError`s
(aiohttp errors are mapped onto httpx's exception tree), so the choice stays one word in the
settings. What it skips is httpx's object model per call: building an `httpx.Request` (parsing and
validating the URL and headers again for every workflow) and an `httpx.Response` (normalising the
headers, running the body through its decoders) cost more CPU than aiohttp's whole request here
(the measurements are in docs/performance.md). DialNexa's answers are a few hundred bytes, so each
is read whole.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
import httpx


@dataclass(frozen=True, slots=True)
class AiohttpAnswer:
    """One answer, read whole: what the client needs of it, as an `httpx.Response` spells it."""

    status_code: int
    headers: Mapping[str, str]  # aiohttp's, case-insensitive
    content: bytes
    reason_phrase: str


class AiohttpSession:
    """One pooled aiohttp `ClientSession`, created on first use inside the running loop."""

    def __init__(
        self, base_url: str, headers: dict[str, str], timeout: httpx.Timeout, max_connections: int
    ) -> None:
        self._base_url = base_url.rstrip("/") + "/"
        self._headers = headers
        # pool: the wait for a free connection plus connecting; read: between bytes of the answer.
        self._timeout = aiohttp.ClientTimeout(
            sock_connect=timeout.connect, sock_read=timeout.read, connect=timeout.pool
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

    async def request(self, method: str, path: str) -> AiohttpAnswer:
        """Send one request; the whole answer is read before it is returned."""
        session = self._session or self._open()
        self._session = session
        try:
            async with session.request(method, self._base_url + path, allow_redirects=False) as answer:
                body = await answer.read()
        except TimeoutError as error:
            raise httpx.ReadTimeout(str(error) or "timed out") from error
        except aiohttp.ClientConnectorError as error:
            raise httpx.ConnectError(str(error)) from error
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as error:
            raise httpx.RemoteProtocolError(str(error) or "server disconnected") from error
        except aiohttp.ClientError as error:
            raise httpx.NetworkError(str(error)) from error
        return AiohttpAnswer(answer.status, answer.headers, body, answer.reason or "")

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
