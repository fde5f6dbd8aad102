"""An email due at once is delivered in the thread that wrote it when that process's worker takes the
emails queue anyway, and by its sender's message otherwise (worker.queue.consumption)."""

from __future__ import annotations

import dramatiq
from dramatiq import Middleware
from dramatiq.brokers.stub import StubBroker

from tests.support.dunning import drain_queues, emails, failed, know_owner
from tests.support.helpers import drain, post_event
from worker.queue.consumption import install, run_here_or_send


class Enqueued(Middleware):
    """The actor names of the messages the broker accepted, in order."""

    def __init__(self):
        self.actors: list[str] = []

    def after_enqueue(self, broker, message, delay):
        self.actors.append(message.actor_name)


def _recording(broker) -> Enqueued:
    recorder = Enqueued()
    broker.add_middleware(recorder)
    return recorder


def test_a_process_consumes_what_its_running_workers_take():
    broker = StubBroker()
    consumption = install(broker)
    assert install(broker) is consumption  # once per broker
    for name in ("events", "emails"):
        broker.declare_queue(name)
    assert not consumption.consumes("emails")  # no worker: a web, scheduler or CLI process

    some = dramatiq.Worker(broker, queues={"events"}, worker_timeout=50, worker_threads=1)
    some.start()
    try:
        assert consumption.consumes("events") and not consumption.consumes("emails")
        every = dramatiq.Worker(broker, worker_timeout=50, worker_threads=1)
        every.start()
        try:
            assert consumption.consumes("emails")
        finally:
            every.stop()
        assert not consumption.consumes("emails")  # the worker that took it stopped
    finally:
        some.stop()
    assert not consumption.consumes("events")


def test_run_here_when_consumed_and_send_the_message_when_not_or_when_the_run_fails():
    broker = StubBroker()
    consumption = install(broker)
    recorder = _recording(broker)
    ran: list[str] = []

    @dramatiq.actor(broker=broker, queue_name="emails", max_retries=0)
    def deliver(email_id: str) -> None:
        if email_id.startswith("bad"):
            raise RuntimeError("the provider is down")
        ran.append(email_id)

    run_here_or_send(consumption, deliver, "em_1")  # nothing consumes emails here: its message
    assert (ran, recorder.actors) == ([], ["deliver"])
    run_here_or_send(None, deliver, "em_2")  # a runtime that has no consumption either
    assert (ran, recorder.actors) == ([], ["deliver", "deliver"])
    broker.flush_all()

    worker = dramatiq.Worker(broker, worker_timeout=50, worker_threads=1)
    worker.start()
    try:
        run_here_or_send(consumption, deliver, "em_3")
        assert (ran, recorder.actors) == (["em_3"], ["deliver", "deliver"])  # run here, nothing sent
        run_here_or_send(consumption, deliver, "bad_4")  # the run raised: its message, for the retries
        assert recorder.actors[-1] == "deliver" and len(recorder.actors) == 3
        broker.join("emails", fail_fast=False)  # the message ran (and failed) on the worker
    finally:
        worker.stop()


def test_a_worker_on_every_queue_sends_the_email_without_a_message(runtime, client, stripe_data):
    recorder = _recording(runtime.broker)
    failure = failed("in_here_1", customer="cus_here")
    know_owner(runtime, failure)
    assert post_event(client, failure).status_code == 200
    drain(runtime)
    assert [(e["template"], e["status"]) for e in emails(runtime)] == [("payment-failed", "sent")]
    assert "send_email" not in recorder.actors
    assert "process_event" in recorder.actors


def test_a_worker_without_the_emails_queue_leaves_the_email_to_its_message(runtime, client, stripe_data):
    recorder = _recording(runtime.broker)
    failure = failed("in_there_1", customer="cus_there")
    know_owner(runtime, failure)
    assert post_event(client, failure).status_code == 200
    drain_queues(runtime, ("events",))  # `dunning worker --queues events`
    assert [(e["template"], e["status"]) for e in emails(runtime)] == [("payment-failed", "pending")]
    assert recorder.actors.count("send_email") == 1
    drain_queues(runtime, ("emails",))  # the host that takes the emails queue sends it
    assert [e["status"] for e in emails(runtime)] == ["sent"]


def test_what_a_run_here_binds_for_its_log_lines_is_undone_after_it():
    """An email delivered in the event's thread names its own case, invoice and customer on its
    lines; the event's later lines (event.processed) still name the event's."""
    import structlog

    from worker.pure.message_log import bind_ids_of
    broker = StubBroker()
    consumption = install(broker)
    broker.declare_queue("emails")

    @dramatiq.actor(broker=broker, queue_name="emails")
    def deliver(email_id: str) -> None:
        bind_ids_of({"case_id": None, "invoice_id": None, "customer_id": "cus_other"})
        assert structlog.contextvars.get_contextvars()["customer_id"] == "cus_other"

    worker = dramatiq.Worker(broker, worker_timeout=50, worker_threads=1)
    worker.start()
    structlog.contextvars.clear_contextvars()
    try:
        ids = {"message_id": "m1", "case_id": "dc_1", "invoice_id": "in_1", "customer_id": "cus_1"}
        structlog.contextvars.bind_contextvars(**ids)
        run_here_or_send(consumption, deliver, "em_1")
        assert structlog.contextvars.get_contextvars() == ids
    finally:
        structlog.contextvars.clear_contextvars()
        worker.stop()
