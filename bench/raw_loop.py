"""The ceiling of this stack: the least a worker can do per event, with the same libraries.

Consume with the given prefetch; for each workflow id POST the simulator's cancel URL with the
Bearer header (at most `concurrency` requests in flight); publish one output (persistent, mandatory,
publisher-confirmed); then ack. No validation, metrics, logging or retries: a 2xx or 409 is success,
anything else is nacked.

python -m bench.raw_loop --amqp-url URL --queue Q --output-exchange X --base-url URL --api-key K
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time

import aio_pika
import aiohttp
from aio_pika.abc import AbstractIncomingMessage


async def run(args: argparse.Namespace) -> None:
    connection = await aio_pika.connect(args.amqp_url, timeout=10)
    publisher = await connection.channel(publisher_confirms=True, on_return_raises=True)
    output = await publisher.get_exchange(args.output_exchange, ensure=False)
    consumer = await connection.channel()
    await consumer.set_qos(prefetch_count=args.prefetch)
    queue = await consumer.get_queue(args.queue, ensure=False)
    session = aiohttp.ClientSession(
        headers={"Authorization": f"Bearer {args.api_key}", "Accept": "application/json"},
        connector=aiohttp.TCPConnector(limit=args.concurrency),
        timeout=aiohttp.ClientTimeout(total=15),
    )
    base = args.base_url.rstrip("/")

    async def on_message(message: AbstractIncomingMessage) -> None:
        event = json.loads(message.body)
        for workflow_id in event["data"]["workflow_ids"]:
            async with session.post(f"{base}/workflows/{workflow_id}/cancel") as response:
                answer = await response.json(content_type=None)
            if not (200 <= response.status < 300 or response.status == 409):
                await message.nack(requeue=True)
                return
            body = {
                "specversion": "1.0",
                "type": "workflow-cancelled",
                "subject": workflow_id,
                "time": time.time(),
                "data": {"workflow_id": workflow_id, "status": answer.get("status"), "trigger": event["id"]},
            }
            await output.publish(
                aio_pika.Message(
                    json.dumps(body).encode(),
                    content_type="application/cloudevents+json",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
                args.routing_key,
                mandatory=True,
            )
        await message.ack()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await queue.consume(on_message)
    print("raw loop consuming", flush=True)
    try:
        await stop.wait()
    finally:
        await session.close()
        await connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--amqp-url", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--output-exchange", required=True)
    parser.add_argument("--routing-key", default="workflow-cancelled")
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--prefetch", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=16, help="HTTP connections (requests in flight)")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = parser.parse_args()
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(run(args))
    else:
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
