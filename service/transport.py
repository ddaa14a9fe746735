"""httpx's transport interface over one aiohttp session, reading each (small) answer whole.

httpx's own transport was the slowest option measured here, and httpx-aiohttp's streams every body
through an adapter; DialNexa's answers are a few hundred bytes, so this one reads them in one go.
Measurements: docs/benchmarks.md. aiohttp errors map onto httpx's exception tree, so the client
above sees the same `httpx.TransportError`s whichever transport runs.
"""

from __future__ import annotations

import aiohttp
import httpx


class AiohttpTransport(httpx.AsyncBaseTransport):
    """One pooled aiohttp `ClientSession`, created on first use inside the running loop."""

    def __init__(self, max_connections: int) -> None:
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=self._max_connections)
        # httpx decodes Content-Encoding itself, from the headers passed up with the raw body.
        return aiohttp.ClientSession(
            connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",)
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._session or self._open()
        self._session = session
        timeout = request.extensions.get("timeout", {})
        try:
            async with session.request(
                request.method,
                str(request.url),
                headers=request.headers,
                data=request.content or None,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(
                    sock_connect=timeout.get("connect"),
                    sock_read=timeout.get("read"),
                    connect=timeout.get("pool"),
                ),
            ) as answer:
                body = await answer.read()
        except TimeoutError as error:
            raise httpx.ReadTimeout(str(error) or "timed out", request=request) from error
        except aiohttp.ClientConnectorError as error:
            raise httpx.ConnectError(str(error), request=request) from error
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as error:
            raise httpx.RemoteProtocolError(str(error) or "server disconnected", request=request) from error
        except aiohttp.ClientError as error:
            raise httpx.NetworkError(str(error), request=request) from error
        return httpx.Response(
            answer.status,
            headers=answer.raw_headers,
            content=body,
            request=request,
            extensions={"reason_phrase": (answer.reason or "").encode()},
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
