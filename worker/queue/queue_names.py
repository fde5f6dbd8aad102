"""The service's queue names, and which of them carry work due at a time rather than at once.

Kept apart from the actors (worker.queue.actors declares them on these queues) so that the broker
(worker.queue.broker) can pace its consumers by queue without importing the actors.
"""

from __future__ import annotations

QUEUES = ("events", "steps", "emails", "notices", "stripe")
# Queues whose messages are sent when their work is due at a time, not at once: run_case_steps, sent
# by the scheduler's pass for the steps due by then. Their idle consumers (and every delay queue's)
# poll every WORKER_SCHEDULED_POLL_MS, not WORKER_IDLE_POLL_MS (worker.queue.broker.PacedRedisBroker).
SCHEDULED_QUEUES = frozenset({"steps"})
