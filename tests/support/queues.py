"""Messages taken straight off a real broker's queue, as a worker would take them; and the story
`dunning dlq` tells of them, the same on Redis and RabbitMQ."""

from __future__ import annotations

from tests.support.cli import run, run_json
from tests.support.helpers import wait_until


def _take(runtime, queue: str, settle: str):
    consumer = runtime.broker.consume(queue, prefetch=1, timeout=2000)
    try:
        message = wait_until(lambda: next(consumer), timeout=10, message=f"a message on {queue}")
        getattr(consumer, settle)(message)
        return message
    finally:
        consumer.close()


def dead_letter(runtime, queue: str):
    """Take one message off `queue` and reject it, as a worker does when retries run out."""
    return _take(runtime, queue, "nack")


def take_one(runtime, queue: str):
    """Take one message off `queue` and acknowledge it, as a worker does when it is done."""
    return _take(runtime, queue, "ack")


# -- `dunning dlq`: list, requeue one by id, requeue the rest by queue ------------------------------
DEAD = {("emails", "send_email", ("em_dead_1",)), ("events", "process_event", ("evt_dead_1",))}


def dead_letter_an_email_and_an_event(runtime):
    """One message sent to `emails` and one to `events`, both dead-lettered: (the email's, the event's)."""
    runtime.actors.send_email.send("em_dead_1")
    email = dead_letter(runtime, "emails")
    runtime.actors.process_event.send("evt_dead_1")
    return email, dead_letter(runtime, "events")


def dlq_list() -> list[dict]:
    """`dunning dlq list --json`, checked to name just the two of dead_letter_an_email_and_an_event."""
    listed = run_json("dlq", "list")
    assert {(d["queue"], d["actor"], tuple(d["args"])) for d in listed} == DEAD
    return listed


def requeue_by_id(message) -> None:
    """`dunning dlq requeue ID`: that message, and only it, is requeued."""
    done = run_json("dlq", "requeue", message.message_id)
    assert [d["message_id"] for d in done["requeued"]] == [message.message_id] and done["not_found"] == []


def the_requeued_email_comes_back_and_the_rest_follow(runtime, email, event) -> None:
    """After requeue_by_id(email): the email comes off its queue as it was sent, its retries reset;
    an unknown id is refused; `--queue events` requeues the event; no dead letter is left."""
    again = take_one(runtime, "emails")
    assert again.message_id == email.message_id and tuple(again.args) == ("em_dead_1",)
    assert again.options.get("retries", 0) == 0
    assert "no dead letter with id nope" in run("dlq", "requeue", "nope", code=1)
    everything = run_json("dlq", "requeue", "--queue", "events")
    assert [d["message_id"] for d in everything["requeued"]] == [event.message_id]
    assert run_json("dlq", "list") == []
