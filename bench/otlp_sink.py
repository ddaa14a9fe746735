"""A local OTLP/HTTP trace receiver for measuring the cost of tracing: accepts `POST /v1/traces`,
counts the spans, answers 200, keeps nothing.

    python -m bench.otlp_sink --port 4318 &
    OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 python -m bench --only a --runs 3

It prints the spans received so far once a second while they keep arriving.
"""

from __future__ import annotations

import argparse
import asyncio

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


def receiver(count: list[int]) -> web.Application:
    """The receiving app; `count[0]` grows by the spans of each export."""

    async def traces(request: web.Request) -> web.Response:
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        count[0] += sum(len(scope.spans) for rs in message.resource_spans for scope in rs.scope_spans)
        return web.Response(status=200, content_type="application/x-protobuf", body=b"")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", traces)
    return app


async def serve(host: str, port: int) -> None:
    """Receive until interrupted."""
    count = [0, 0]  # spans received, spans last printed
    runner = web.AppRunner(receiver(count), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    print(f"receiving OTLP traces on http://{host}:{port}/v1/traces", flush=True)
    while True:
        await asyncio.sleep(1)
        if count[0] != count[1]:
            count[1] = count[0]
            print(f"spans received: {count[0]:,}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4318)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
