"""Watch workflow-cancelled events on a local broker, or bind a queue that keeps them.

python scripts/sample.py watch            # prints each workflow-cancelled event, Ctrl-C to stop
python scripts/sample.py bind             # a durable queue for the outputs (`make run` does this)

To send an event, use the operator command: `workflow-canceller publish ...` (README).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os

import aio_pika

DEFAULT_URL = os.environ.get("CANCELLER_AMQP_URL", "amqp://guest:guest@localhost:5672/")


async def watch(url: str, exchange: str, routing_key: str) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        source = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(source, routing_key)
        print(f"watching {exchange!r} for {routing_key!r} (Ctrl-C to stop)", flush=True)
        async with queue.iterator() as messages:
            async for message in messages:
                async with message.process():
                    print(json.dumps(json.loads(message.body), indent=2), flush=True)


async def bind(url: str, exchange: str, routing_key: str, queue_name: str) -> None:
    """Declare a durable queue (at most 10,000 messages) bound to the output, so outputs are routable."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        source = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(queue_name, durable=True, arguments={"x-max-length": 10_000})
        await queue.bind(source, routing_key)
        print(f"queue {queue_name!r} keeps {routing_key!r} events from {exchange!r}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default=DEFAULT_URL)
    commands = parser.add_subparsers(dest="command", required=True)
    sub = commands.add_parser("watch")
    sub.add_argument("--exchange", default="workflow.events")
    sub.add_argument("--routing-key", default="workflow-cancelled")
    keep = commands.add_parser("bind")
    keep.add_argument("--exchange", default="workflow.events")
    keep.add_argument("--routing-key", default="workflow-cancelled")
    keep.add_argument("--queue", default="workflow-canceller.local-outputs")
    args = parser.parse_args()
    try:
        if args.command == "bind":
            asyncio.run(bind(args.url, args.exchange, args.routing_key, args.queue))
        else:
            asyncio.run(watch(args.url, args.exchange, args.routing_key))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
