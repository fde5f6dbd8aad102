"""Leased delivery of outbox rows, written once for emails and platform notices.

An outbox row (`emails`, `platform_notices`) is the truth about one delivery. A worker claims it
with a guarded update (pending -> sending, attempts + 1, a lease), so two workers holding the same
id cannot both deliver it; a worker that dies mid-send leaves `sending` with a lapsed lease, which
the sweeper hands out again. A failed try is retried with exponential backoff (the state lives in
the row, so it survives restarts) until the row has been tried at least `min_attempts` times over
at least `retry_for`: then it is failed, kept and visible. Every outcome is written only while the
claim is still ours (status sending, same attempt). The caller passes the instants (its clock).

What differs per kind (the order of notices, the cancellations of emails, the transport) stays in
worker/delivery/email_delivery.py and worker/delivery/notices.py; they describe their rows with a `Leased`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Mapping

from sqlalchemy import Connection, and_, or_, update


@dataclass(frozen=True)
class Leased:
    """One kind of outbox row and how it is tried (`name` starts its log events: email.gave_up)."""

    table: str
    name: str
    lease: timedelta            # a try takes less than this; after it the row may be tried again
    enqueue_lease: timedelta    # a queued delivery message is not queued again before this
    backoff_base: timedelta
    backoff_cap: timedelta
    retry_for: timedelta        # failures are retried at least this long...
    min_attempts: int           # ...and at least this many times, then the row is failed

    def backoff(self, attempts: int) -> timedelta:
        """base, 2 x base, 4 x base ... capped, after the n-th failed attempt."""
        return min(self.backoff_base * (2 ** max(0, attempts - 1)), self.backoff_cap)

    def exhausted(self, attempts: int, created_at: datetime, now: datetime) -> bool:
        """Retried long enough: at least min_attempts tries over at least retry_for."""
        return attempts >= self.min_attempts and now - created_at >= self.retry_for

    def give_up_interrupted(self, db, conn: Connection, row: Mapping[str, Any], log, **fields) -> None:
        """A `sending` row whose tries were interrupted again and again (a worker dying on this very
        row): failed, visibly, instead of claimed once more."""
        table = db.table(self.table)
        conn.execute(update(table).where(table.c.id == row["id"], table.c.status == "sending",
                                         table.c.attempts == row["attempts"])
                     .values(status="failed", lease_until=None,
                             last_error=f"gave up: {row['attempts']} attempts, the last one interrupted"))
        log.error(f"{self.name}.gave_up", **{f"{self.name}_id": row["id"]}, attempts=row["attempts"], **fields)

    def claim(self, db, conn: Connection, row: Mapping[str, Any], now: datetime) -> bool:
        """pending (or sending with a lapsed lease) -> sending with a lease, one attempt more; False
        when another worker changed the row first."""
        return bool(db.update_by(
            conn, db.table(self.table),
            {"status": "sending", "lease_until": now + self.lease, "attempts": row["attempts"] + 1,
             "enqueued_at": None},
            id=row["id"], status=row["status"], attempts=row["attempts"]).rowcount)

    def finish(self, db, row_id: str, attempt: int, **values) -> None:
        """Record the outcome, only if the row is still ours (same claim: status sending, same attempt).
        One statement, committed on its own (autocommit: no round trips for BEGIN and COMMIT)."""
        with db.autocommit() as conn:
            db.update_by(conn, db.table(self.table), values, id=row_id, status="sending", attempts=attempt)

    def retry_later(self, db, row_id: str, attempt: int, created_at: datetime, error: str, bound,
                    now: datetime) -> str:
        """A failed try: pending again after the backoff, or failed once retried long enough."""
        if self.exhausted(attempt, created_at, now):
            self.finish(db, row_id, attempt, status="failed", last_error=error[:2000], lease_until=None)
            bound.error(f"{self.name}.gave_up", error=error[:300])
            return "failed"
        next_at = now + self.backoff(attempt)
        self.finish(db, row_id, attempt, status="pending", last_error=error[:2000], next_attempt_at=next_at,
                    lease_until=None)
        bound.warning(f"{self.name}.retry_scheduled", error=error[:300], next_attempt_at=next_at.isoformat())
        return "pending"

    def sweepable(self, table, now: datetime):
        """Rows the sweeper hands out: pending and due, not queued within enqueue_lease, or sending
        with a lapsed lease (a worker died)."""
        return or_(and_(table.c.status == "pending", table.c.next_attempt_at <= now,
                        or_(table.c.enqueued_at.is_(None), table.c.enqueued_at <= now - self.enqueue_lease)),
                   and_(table.c.status == "sending", table.c.lease_until < now))

    def mark_swept(self, conn: Connection, table, rows, now: datetime, real_now: datetime) -> None:
        """The swept rows are queued as of `now`; those due only by a ticked `now` (`dunning tick
        --at`) are made due on the real clock, so the sender does not wait out a skipped backoff."""
        for row in rows:
            if row["status"] == "pending" and row["next_attempt_at"] > real_now:
                conn.execute(update(table).where(table.c.id == row["id"], table.c.status == "pending")
                             .values(next_attempt_at=real_now))
        if rows:
            conn.execute(update(table).where(table.c.id.in_([r["id"] for r in rows])).values(enqueued_at=now))
