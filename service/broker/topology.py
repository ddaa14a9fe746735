"""Broker topology, declared idempotently at every (re)connect.

    crm.events (topic) --campaign-ended-----> workflow-canceller.campaign-ended      (quorum)
                       --complaint-received-> workflow-canceller.complaint-received  (quorum)
    input queue --(delivery limit)--> workflow-canceller.dead-letter (fanout) --> workflow-canceller.dlq
    worker --(retry copy, via default exchange)--> workflow-canceller.delay.<ms>ms (quorum, message TTL)
    delay queue --(TTL)--> workflow-canceller.requeue (headers, canceller-return-queue) --> input queue
    worker --(continuation copy)--> workflow-canceller.requeue --> input queue
    worker --workflow-cancelled--> workflow.events (topic)

Works on RabbitMQ 3.10 and later: quorum queues with message TTL and at-least-once dead-lettering
(which needs `x-overflow: reject-publish`) exist since 3.10. Every quorum queue that can
dead-letter does so at-least-once, so a delayed retry or a delivery-limit overflow is never lost in
transit. The input queues set an explicit delivery limit with the DLQ behind it: RabbitMQ 4.x
would otherwise apply its default limit of 20 and drop messages past it.
"""

from __future__ import annotations

from dataclasses import dataclass

from aio_pika import ExchangeType
from aio_pika.abc import AbstractChannel, AbstractExchange
from pamqp.common import FieldTable

from ..config import Settings
from ..retry import HEADER_QUEUE, delay_steps_s

_QUORUM: FieldTable = {"x-queue-type": "quorum"}
DLQ_DELIVERY_LIMIT = 1_000_000


@dataclass(frozen=True, slots=True)
class Exchanges:
    output: AbstractExchange
    dead_letter: AbstractExchange
    requeue: AbstractExchange


def _dead_letters_to(exchange: str) -> FieldTable:
    return {
        "x-dead-letter-exchange": exchange,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


async def declare(channel: AbstractChannel, settings: Settings) -> Exchanges:
    """Declare every exchange, queue and binding the service uses; safe to repeat."""
    inputs = await channel.declare_exchange(settings.input_exchange, ExchangeType.TOPIC, durable=True)
    output = await channel.declare_exchange(settings.output_exchange, ExchangeType.TOPIC, durable=True)
    dead_letter = await channel.declare_exchange(
        settings.dead_letter_exchange, ExchangeType.FANOUT, durable=True
    )
    requeue = await channel.declare_exchange(settings.requeue_exchange, ExchangeType.HEADERS, durable=True)

    # RabbitMQ 4.x gives every quorum queue a delivery limit of 20 unless one is set, and before
    # 4.3 each give-back counts: 20 `dlq list` runs would drop every dead letter (the DLQ has no
    # dead-letter target of its own). An explicit limit no operator can reach keeps them.
    dlq = await channel.declare_queue(
        settings.dead_letter_queue,
        durable=True,
        arguments={**_QUORUM, "x-delivery-limit": DLQ_DELIVERY_LIMIT},
    )
    await dlq.bind(dead_letter, routing_key="")

    for name, routing_key in settings.input_queues.items():
        queue = await channel.declare_queue(
            name,
            arguments={
                **_QUORUM,
                **_dead_letters_to(settings.dead_letter_exchange),
                "x-delivery-limit": settings.delivery_limit,
            },
            durable=True,
        )
        await queue.bind(inputs, routing_key=routing_key)
        await queue.bind(requeue, routing_key="", arguments={"x-match": "all", HEADER_QUEUE: name})

    for step in delay_steps_s(settings.retry_delays):
        await channel.declare_queue(
            settings.delay_queue_name(step),
            arguments={
                **_QUORUM,
                **_dead_letters_to(settings.requeue_exchange),
                "x-message-ttl": round(step * 1000),
            },
            durable=True,
        )
    return Exchanges(output=output, dead_letter=dead_letter, requeue=requeue)
