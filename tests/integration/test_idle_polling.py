"""Idle polling paced by queue (worker.queue.broker.PacedRedisBroker), on the local Redis.

A Dramatiq worker's consumers poll an empty Redis queue as often as their backoff cap allows. Work
due at once (events, emails, notices, Stripe calls) keeps WORKER_IDLE_POLL_MS; the steps queue and
every delay queue, whose work is due at a time, back off up to WORKER_SCHEDULED_POLL_MS. These tests
run a real Dramatiq worker, so they check the cap Dramatiq itself gives each consumer, and that a
delayed message still arrives when its delay queue is polled less often.
"""

from __future__ import annotations

import threading
import time
import uuid

import dramatiq
import pytest

from config.settings import ConfigError, load_settings
from tests.support.helpers import wait_until
from tests.support.services import TEST_REDIS_URL, base_env, redis_reachable, skip_or_fail
from worker.queue.queue_names import QUEUES, SCHEDULED_QUEUES
from worker.queue.broker import make_broker
from worker.queue.queue_state import broker_kind


@pytest.fixture
def paced(tmp_path):
    """A broker made as the service makes it, on a namespace of its own (deleted afterwards)."""
    if not redis_reachable():
        skip_or_fail("Redis")
    namespace = f"dunning-test-paced-{uuid.uuid4().hex[:8]}"
    settings = load_settings(base_env(tmp_path, REDIS_URL=TEST_REDIS_URL, QUEUE_NAMESPACE=namespace,
                                      WORKER_SCHEDULED_POLL_MS="1500"))
    broker = make_broker(settings)
    yield broker
    for key in broker.client.scan_iter(f"{namespace}*"):
        broker.client.delete(key)
    broker.close()


def started_worker(broker, timeout_ms: int) -> dramatiq.Worker:
    worker = dramatiq.Worker(broker, worker_timeout=timeout_ms, worker_threads=1)
    worker.start()
    return worker


def idle_poll_caps(worker: dramatiq.Worker, queues: int) -> dict[str, int]:
    """queue -> the backoff cap (ms) of its consumer, once the worker's `queues` consumers are polling."""
    wait_until(lambda: len(worker.consumers) == queues and all(
        thread.consumer is not None for thread in worker.consumers.values()), timeout=10)
    return {name: thread.consumer.timeout for name, thread in worker.consumers.items()}


def test_consumers_of_work_due_at_a_time_poll_as_worker_scheduled_poll_ms_says(paced):
    for queue in QUEUES:
        dramatiq.actor(lambda: None, broker=paced, queue_name=queue, actor_name=f"noop_{queue}")
    worker = started_worker(paced, timeout_ms=250)
    try:
        expected = {q: 1500 if q in SCHEDULED_QUEUES else 250 for q in QUEUES}
        expected.update({f"{q}.DQ": 1500 for q in QUEUES})
        assert idle_poll_caps(worker, len(expected)) == expected
    finally:
        worker.stop()
    assert broker_kind(paced) == "redis"  # a subclass of Dramatiq's RedisBroker is still Redis


def test_an_idle_poll_longer_than_the_scheduled_one_is_kept(paced):
    dramatiq.actor(lambda: None, broker=paced, queue_name="steps", actor_name="noop_steps")
    worker = started_worker(paced, timeout_ms=4000)  # WORKER_IDLE_POLL_MS above WORKER_SCHEDULED_POLL_MS
    try:
        assert idle_poll_caps(worker, 2) == {"steps": 4000, "steps.DQ": 4000}
    finally:
        worker.stop()


def test_a_delayed_message_still_runs_soon_after_its_eta(paced):
    """Its delay queue is polled every 0.75-1.5 s here; the worker fetches the message early and
    holds it until its eta, so it runs at most one such poll late."""
    ran = threading.Event()
    ran_at: list[float] = []

    def record() -> None:
        ran_at.append(time.monotonic())
        ran.set()

    actor = dramatiq.actor(record, broker=paced, queue_name="events", actor_name="record_delayed")
    worker = started_worker(paced, timeout_ms=250)
    try:
        assert idle_poll_caps(worker, 2) == {"events": 250, "events.DQ": 1500}
        sent_at = time.monotonic()
        actor.send_with_options(delay=2000)
        assert ran.wait(10), "the delayed message never ran"
        assert 2.0 <= ran_at[0] - sent_at < 2.0 + 1.5 + 1.0  # its eta, at most one scheduled poll, slack
    finally:
        worker.stop()


def test_worker_scheduled_poll_ms_is_read_and_bounded(tmp_path):
    assert load_settings(base_env(tmp_path)).worker_scheduled_poll_ms == 1000
    assert load_settings(base_env(tmp_path, WORKER_SCHEDULED_POLL_MS="5000")).worker_scheduled_poll_ms == 5000
    for bad in ("0", "600000", "soon"):
        with pytest.raises(ConfigError, match="WORKER_SCHEDULED_POLL_MS"):
            load_settings(base_env(tmp_path, WORKER_SCHEDULED_POLL_MS=bad))
