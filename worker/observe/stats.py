"""Counts for `dunning stats` and /metrics: events, cases, emails and notices by status."""

from __future__ import annotations

from sqlalchemy import func, select

from worker.pure.clock import isoformat


def _count_by(conn, table, column) -> dict[str, int]:
    rows = conn.execute(select(column, func.count()).select_from(table).group_by(column))
    return {str(key): int(n) for key, n in rows}


def collect_stats(db) -> dict:
    t = db.tables
    with db.reading(snapshot=True) as conn:
        notices = t["platform_notices"]
        pending = conn.execute(
            select(notices.c.id, notices.c.type, notices.c.account_id, notices.c.attempts,
                   notices.c.last_error, notices.c.next_attempt_at)
            .where(notices.c.status == "pending").order_by(notices.c.created_at).limit(50)
        ).mappings().all()
        failed = conn.execute(
            select(notices.c.id, notices.c.type, notices.c.account_id, notices.c.seq, notices.c.attempts,
                   notices.c.last_error)
            .where(notices.c.status == "failed").order_by(notices.c.account_id, notices.c.seq).limit(50)
        ).mappings().all()
        failed_count = conn.execute(select(func.count()).select_from(notices)
                                    .where(notices.c.status == "failed")).scalar_one()
        emails = t["emails"]
        failing_emails = conn.execute(
            select(emails.c.id, emails.c.template, emails.c.attempts, emails.c.last_error)
            .where(emails.c.status.in_(("pending", "failed")), emails.c.attempts > 0)
            .order_by(emails.c.created_at).limit(50)
        ).mappings().all()
        return {
            "events": _count_by(conn, t["events"], t["events"].c.status),
            "cases": _count_by(conn, t["cases"], t["cases"].c.state),
            "emails": _count_by(conn, emails, emails.c.status),
            "notices": _count_by(conn, notices, notices.c.status),
            "pending_notices": [
                {**dict(row), "next_attempt_at": isoformat(row["next_attempt_at"])} for row in pending
            ],
            "failing_emails": [dict(row) for row in failing_emails],
            # gave up after the retry window: `dunning notices redeliver --failed` pushes them again
            "notices_failed": int(failed_count),
            "failed_notices": [dict(row) for row in failed],
            "owner_unreachable_cases": _unreachable(conn, db),
        }


def _unreachable(conn, db) -> int:
    from handlers.reachability import unreachable_count
    return unreachable_count(conn, db)
