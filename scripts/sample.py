"""Publish a sample CRM event, or watch workflow-cancelled events, on a local broker.

python scripts/sample.py publish campaign-ended --workflows 3
python scripts/sample.py publish complaint-received --workflows 1
python scripts/sample.py watch            # prints each workflow-cancelled event, Ctrl-C to stop
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import uuid
from datetime import UTC, datetime

import aio_pika

DEFAULT_URL = os.environ.get("CANCELLER_AMQP_URL", "amqp://guest:guest@localhost:5672/")


def sample_event(event_type: str, workflows: int) -> dict[str, object]:
    suffix = uuid.uuid4().hex[:8]
    ids = [f"wf_{suffix}_{n}" for n in range(workflows)]
    data: dict[str, object] = {"workflow_ids": ids}
    if event_type == "campaign-ended":
        data |= {"campaign_id": f"cmp_{suffix}", "reason": "sample"}
    else:
        data |= {"complaint_id": f"cpl_{suffix}", "lead_id": f"lead_{suffix}", "phone_number": "+15555550123"}
    return {
        "specversion": "1.0",
        "id": f"evt_{uuid.uuid4()}",
        "source": "urn:crm:sample",
        "type": event_type,
        "time": datetime.now(UTC).isoformat(),
        "data": data,
    }


async def publish(url: str, exchange: str, event_type: str, workflows: int) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        target = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        event = sample_event(event_type, workflows)
        await target.publish(
            aio_pika.Message(
                json.dumps(event).encode(),
                content_type="application/cloudevents+json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=str(event["id"]),
            ),
            routing_key=event_type,
        )
        print(json.dumps(event, indent=2))


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
    pub = commands.add_parser("publish")
    pub.add_argument("event_type", choices=["campaign-ended", "complaint-received"])
    pub.add_argument("--workflows", type=int, default=3)
    pub.add_argument("--exchange", default="crm.events")
    sub = commands.add_parser("watch")
    sub.add_argument("--exchange", default="workflow.events")
    sub.add_argument("--routing-key", default="workflow-cancelled")
    keep = commands.add_parser("bind")
    keep.add_argument("--exchange", default="workflow.events")
    keep.add_argument("--routing-key", default="workflow-cancelled")
    keep.add_argument("--queue", default="workflow-canceller.local-outputs")
    args = parser.parse_args()
    try:
        if args.command == "publish":
            asyncio.run(publish(args.url, args.exchange, args.event_type, args.workflows))
        elif args.command == "bind":
            asyncio.run(bind(args.url, args.exchange, args.routing_key, args.queue))
        else:
            asyncio.run(watch(args.url, args.exchange, args.routing_key))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
