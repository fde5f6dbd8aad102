"""The end-to-end baseline: one no-op actor on the service's own broker setup, for the dramatiq CLI.

    dramatiq --processes P --threads T bench.noop_actors

Same broker factory (worker.queue.broker.make_redis_broker: same heartbeat, maintenance and middleware
tuning) and the same queue name as process_event, in a namespace of its own (BENCH_NOOP_NAMESPACE),
so e2e / no-op isolates what the pipeline adds over moving a message through Dramatiq.
"""

from __future__ import annotations

import os

import dramatiq

from worker.queue.broker import make_redis_broker

broker = make_redis_broker(os.environ["REDIS_URL"], os.environ["BENCH_NOOP_NAMESPACE"])
dramatiq.set_broker(broker)


@dramatiq.actor(broker=broker, queue_name="events", actor_name="process_event")
def process_event(event_id: str) -> None:
    """Does nothing: the cost of one message through the broker and a worker thread."""
