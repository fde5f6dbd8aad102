"""Messages taken straight off a real broker's queue, as a worker would take them."""

from __future__ import annotations

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
