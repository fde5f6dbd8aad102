"""What the broker holds, read the same way on Redis and RabbitMQ (the reconciler, /metrics,
/readyz and `dunning dlq` ask here, never the broker's client directly).

Redis keeps each queue as keys under the namespace (dramatiq/brokers/redis/dispatch.lua);
RabbitMQ as three durable queues per queue name (`q`, `q.DQ` delayed, `q.XQ` dead letters) in
the virtual host. Counts differ in one way: on Redis "ready" includes messages a worker holds
(the `.msgs` hash), on RabbitMQ only those waiting (held ones are "unacked" there).
The stub broker of unit tests holds nothing we report.
"""

from __future__ import annotations

from dramatiq.common import q_name


def broker_kind(broker) -> str:
    """redis | rabbitmq | stub: which broker this is, by its class or the Dramatiq class it extends
    (worker.queue.broker.PacedRedisBroker), without importing the others."""
    kinds = {"RedisBroker": "redis", "RabbitmqBroker": "rabbitmq"}
    return next((kinds[cls.__name__] for cls in type(broker).__mro__ if cls.__name__ in kinds), "stub")


def service_queues(broker) -> list[str]:
    """The canonical queues this service declares (actors are declared by runtime.setup)."""
    return sorted({q_name(q) for q in broker.queues})


def ping(broker) -> None:
    """Raise when the broker does not answer (for /readyz)."""
    kind = broker_kind(broker)
    if kind == "redis":
        broker.client.ping()
    elif kind == "rabbitmq":
        broker.connection.process_data_events(0)  # a round trip on this thread's connection


def waiting(broker, queue: str) -> int:
    """Messages waiting on `queue` for a worker (not in flight, not delayed)."""
    kind = broker_kind(broker)
    if kind == "redis":
        return broker.client.llen(f"{broker.namespace}:{queue}")
    if kind == "rabbitmq":
        return broker.get_queue_message_counts(queue)[0]
    return 0


def message_counts(broker) -> dict[str, tuple[int, int, int]]:
    """(ready, delayed, dead) per queue of the service; empty for the stub broker."""
    kind = broker_kind(broker)
    queues = service_queues(broker)
    if kind == "redis":
        pipe = broker.client.pipeline(transaction=False)
        for queue in queues:
            for suffix in ("", ".DQ", ".XQ"):
                pipe.hlen(f"{broker.namespace}:{queue}{suffix}.msgs")
        counts = iter(pipe.execute())
        return {queue: (next(counts), next(counts), next(counts)) for queue in queues}
    if kind == "rabbitmq":
        return {queue: tuple(broker.get_queue_message_counts(queue)) for queue in queues}
    return {}
