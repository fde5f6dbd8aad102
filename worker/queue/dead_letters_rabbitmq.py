"""Dead letters on RabbitMQ, for `dunning dlq list|requeue` (the Redis side is in worker/cli/dlq.py).

Dramatiq's RabbitMQ broker declares every queue `q` with a dead-letter route to `q.XQ`; a
message whose retries ran out is rejected there, with RabbitMQ's `x-death` header saying when.
RabbitMQ has no "read without taking": we take every dead letter with basic_get on a channel of
our own and never acknowledge the ones we only look at, so closing the channel puts them back.
While we hold them nobody else sees them, so two operators cannot requeue one letter twice.
A requeued letter is published on its queue (retries reset) before its dead copy is acknowledged:
a crash in between leaves a duplicate, never a loss (actors are idempotent).
"""

from __future__ import annotations

from datetime import timezone

import dramatiq
from dramatiq.common import xq_name

from worker.observe.logs import scrub
from worker.queue.queue_state import service_queues

STALE_OPTIONS = ("eta", "retries", "traceback", "redis_message_id", "requeue_timeout")


def _describe(queue: str, body: bytes, properties) -> dict:
    message = dramatiq.Message.decode(body)
    traceback = (message.options.get("traceback") or "").strip()
    deaths = (properties.headers or {}).get("x-death") or [{}]
    died = deaths[0].get("time")
    return {
        "queue": queue,
        "redis_message_id": None,
        "message_id": message.message_id,
        "actor": message.actor_name,
        "args": list(message.args),
        "kwargs": dict(message.kwargs),
        "retries": message.options.get("retries", 0),
        "dead_at": died.replace(tzinfo=timezone.utc).isoformat().replace("+00:00", "Z") if died else None,
        "error": scrub(traceback.splitlines()[-1])[:300] if traceback else None,
    }


def _take_all(channel, broker, queues):
    """Yield (letter, delivery tag, message) for every dead letter, none acknowledged yet."""
    for queue in queues or service_queues(broker):
        broker.declare_queue(queue, ensure=True)
        while True:
            method, properties, body = channel.basic_get(xq_name(queue), auto_ack=False)
            if method is None:
                break
            yield _describe(queue, body, properties), method.delivery_tag, dramatiq.Message.decode(body)


def dead_letters(broker, queues: list[str] | None = None) -> list[dict]:
    channel = broker.connection.channel()
    try:
        found = [letter for letter, _, _ in _take_all(channel, broker, queues)]
    finally:
        channel.close()  # every letter we took goes back, unacknowledged
    found.sort(key=lambda d: (d["dead_at"] or "", d["queue"]))
    return found


def requeue(broker, *, queues: list[str] | None = None,
            ids: list[str] | None = None) -> tuple[list[dict], list[str]]:
    wanted = set(ids or ())
    done = []
    channel = broker.connection.channel()
    try:
        for letter, tag, message in list(_take_all(channel, broker, queues)):
            if wanted and letter["message_id"] not in wanted:
                continue
            options = {k: v for k, v in message.options.items() if k not in STALE_OPTIONS}
            broker.enqueue(message._replace(queue_name=letter["queue"], options={**options, "retries": 0}))
            channel.basic_ack(tag)
            done.append(letter)
    finally:
        channel.close()
    missing = wanted - {d["message_id"] for d in done}
    return done, sorted(missing)
