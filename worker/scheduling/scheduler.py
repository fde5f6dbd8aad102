"""The scheduler process: every few seconds, one pass of the periodic work.

Timers are rows (cases.next_step_at, outbox next_attempt_at), never long broker delays, so a
pass late by an hour still runs each due step once. Each job is idempotent, so two schedulers
running at once would be wasteful but not wrong; on PostgreSQL only one leads (worker.scheduling.leadership)
and the others wait to take over, so run one per host for availability.
"""

from __future__ import annotations

import signal
import threading
from datetime import datetime

import structlog

from worker.pure.clock import utcnow
from worker.intake.reconciler import reconcile

log = structlog.get_logger("worker.scheduling.scheduler")


def run_pass(runtime, now: datetime) -> dict[str, int]:
    """One pass: reconcile events, enqueue due case steps, retry due outbox rows, scan cards."""
    from worker.scheduling.due_steps import enqueue_due_steps
    from worker.scheduling.card_expiry import scan_expiring_cards
    from worker.delivery.email_delivery import sweep_emails
    from worker.delivery.notices import sweep_notices
    from worker.stripe.jobs import sweep_stripe_jobs

    done: dict[str, int] = {}
    for name, job in (("events_requeued", reconcile), ("steps_enqueued", enqueue_due_steps),
                      ("emails_enqueued", sweep_emails), ("notices_enqueued", sweep_notices),
                      ("expiring_cards", scan_expiring_cards), ("stripe_jobs_enqueued", sweep_stripe_jobs)):
        try:
            done[name] = job(runtime, now)
        except Exception as exc:  # one failing job must not stop the others
            log.error("scheduler.job_failed", job=name, error=f"{type(exc).__name__}: {exc}"[:500])
            done[name] = -1
    return done


def run_forever(runtime, interval: float) -> None:
    from worker.scheduling.leadership import Leadership
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    from worker.privacy.retention import DailyPrune
    daily_prune = DailyPrune(runtime, stop)  # [retention], once a UTC day, on one host only
    log.info("scheduler.started", interval=interval)
    leadership = Leadership(runtime.db)
    try:
        while not stop.is_set():
            if leadership.is_leader():
                now = utcnow()
                done = run_pass(runtime, now)
                daily_prune.maybe_start(now)
                if any(v for v in done.values()):
                    log.info("scheduler.pass", **done)
            stop.wait(interval)
    finally:
        leadership.release()
    log.info("scheduler.stopped")
