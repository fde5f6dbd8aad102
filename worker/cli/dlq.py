"""`dunning dlq list|requeue`: messages Dramatiq dead-lettered after their retries ran out.

Dramatiq's Redis broker (dramatiq/brokers/redis/dispatch.lua, "nack") keeps a dead letter in
two keys per queue: the zset `<namespace>:<queue>.XQ` (member: the redis message id, score:
when it died, in ms) and the hash `<namespace>:<queue>.XQ.msgs` (redis message id -> encoded
message). Dead letters of a delayed queue (`q.DQ`) land on the canonical queue's XQ. They are
purged after the broker's dead_message_ttl (7 days).

A requeue claims the dead letter with ZREM (so two operators cannot requeue it twice), then
enqueues a copy on its queue with the retry count reset, keeping the message id for the logs.
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone

import click
import dramatiq

from worker.cli.base import emit, get_runtime, main
from worker.observe.logs import scrub
from worker.queue.queue_state import service_queues

STALE_OPTIONS = ("eta", "retries", "traceback", "redis_message_id", "requeue_timeout")


class NotRedis(Exception):
    """Raised when the broker keeps no dead letters we can read (the stub broker)."""


def _redis(broker):
    from dramatiq.brokers.redis import RedisBroker
    if not isinstance(broker, RedisBroker):
        raise NotRedis("dead letters are kept by the Redis or RabbitMQ broker; this is neither")
    return broker.client, broker.namespace


def _rabbitmq(broker):
    """The RabbitMQ implementation when the broker is RabbitMQ, else None (Redis, below)."""
    from worker.queue.queue_state import broker_kind
    if broker_kind(broker) != "rabbitmq":
        return None
    from worker.queue import dead_letters_rabbitmq
    return dead_letters_rabbitmq


def _keys(namespace: str, queue: str) -> tuple[str, str]:
    return f"{namespace}:{queue}.XQ", f"{namespace}:{queue}.XQ.msgs"


def dead_letters(broker, queues: list[str] | None = None) -> list[dict]:
    """Every dead letter of the given queues (default: all of the service's), oldest first."""
    if (rabbitmq := _rabbitmq(broker)) is not None:
        return rabbitmq.dead_letters(broker, queues)
    client, namespace = _redis(broker)
    found = []
    for queue in queues or service_queues(broker):
        zset, msgs = _keys(namespace, queue)
        for redis_id, score in client.zrange(zset, 0, -1, withscores=True):
            redis_id = redis_id.decode() if isinstance(redis_id, bytes) else redis_id
            data = client.hget(msgs, redis_id)
            if data is None:
                continue  # purged between the two reads
            message = dramatiq.Message.decode(data)
            traceback = message.options.get("traceback") or ""
            found.append({
                "queue": queue,
                "redis_message_id": redis_id,
                "message_id": message.message_id,
                "actor": message.actor_name,
                "args": list(message.args),
                "kwargs": dict(message.kwargs),
                "retries": message.options.get("retries", 0),
                "dead_at": datetime.fromtimestamp(score / 1000, timezone.utc).replace(microsecond=0)
                .isoformat().replace("+00:00", "Z"),
                "error": scrub(traceback.strip().splitlines()[-1])[:300] if traceback.strip() else None,
            })
    found.sort(key=lambda d: (d["dead_at"], d["queue"]))
    return found


def requeue(broker, *, queues: list[str] | None = None,
            ids: list[str] | None = None) -> tuple[list[dict], list[str]]:
    """Put dead letters back on their queue (all, or those whose message or redis id is given).

    Returns what was requeued and the given ids that matched no dead letter.
    """
    if (rabbitmq := _rabbitmq(broker)) is not None:
        return rabbitmq.requeue(broker, queues=queues, ids=ids)
    client, namespace = _redis(broker)
    wanted = set(ids or ())
    done = []
    for letter in dead_letters(broker, queues):
        if wanted and not wanted & {letter["message_id"], letter["redis_message_id"]}:
            continue
        zset, msgs = _keys(namespace, letter["queue"])
        data = client.hget(msgs, letter["redis_message_id"])
        if data is None or not client.zrem(zset, letter["redis_message_id"]):
            continue  # someone else requeued or deleted it
        client.hdel(msgs, letter["redis_message_id"])
        message = dramatiq.Message.decode(data)
        options = {k: v for k, v in message.options.items() if k not in STALE_OPTIONS}
        fresh = message._replace(queue_name=letter["queue"], options={**options, "retries": 0})
        enqueued = broker.enqueue(fresh)
        done.append({**letter, "new_redis_message_id": enqueued.options["redis_message_id"]})
    missing = wanted - {d["message_id"] for d in done} - {d["redis_message_id"] for d in done}
    return done, sorted(missing)


@main.group()
def dlq() -> None:
    """Dead-lettered queue messages (retries exhausted)."""


@dlq.command("list")
@click.option("--queue", "queues", multiple=True, help="only this queue (repeatable)")
@click.option("--json", "as_json", is_flag=True)
def dlq_list(queues, as_json) -> None:
    """Dead letters of every queue of the service, oldest first."""
    runtime = get_runtime()
    try:
        data = dead_letters(runtime.broker, list(queues) or None)
    except NotRedis as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)

    def render(items):
        if not items:
            click.echo("no dead letters")
        for d in items:
            args = ", ".join(repr(a) for a in d["args"])
            click.echo(f"{d['dead_at']}  {d['queue']:8} {d['message_id']}  {d['actor']}({args})"
                       f"  retries={d['retries']}" + (f"  error={d['error']}" if d["error"] else ""))
    emit(data, as_json, render)


@dlq.command("requeue")
@click.argument("ids", nargs=-1, metavar="[ID]...")
@click.option("--queue", "queues", multiple=True, help="only this queue (repeatable)")
@click.option("--json", "as_json", is_flag=True)
def dlq_requeue(ids, queues, as_json) -> None:
    """Requeue dead letters: the ids given (message or redis id), else every one (of --queue)."""
    runtime = get_runtime()
    try:
        done, missing = requeue(runtime.broker, queues=list(queues) or None, ids=list(ids))
    except NotRedis as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    emit({"requeued": done, "not_found": missing}, as_json,
         lambda d: click.echo(f"requeued {len(d['requeued'])} message(s)"))
    if missing:
        click.echo(f"no dead letter with id {', '.join(missing)}", err=True)
        sys.exit(1)
