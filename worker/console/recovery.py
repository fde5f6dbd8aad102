"""The console's recovery view: over 7 / 30 / 90 days, per currency, what dunning won back.

The cohort is the cases OPENED in the window (a failed invoice each). For each currency: opened,
recovered (and at which step of the schedule: the last step whose day had come when it was paid),
uncollectible, voided, still open, recovery rate, recovered amount, median days to recover; a
weekly chart of failed (opened) vs recovered cases; and, per email template, the emails sent in
the window and how many were followed by payment within 3 days.

Three grouped queries over the 90-day range: seconds at a million cases (bench/console.py), so
the page never waits for them: the result is kept as a snapshot (`console_snapshots`) shared by
every web process; a view of a stale snapshot (older than SNAPSHOT_TTL) shows it and recomputes
it in a background thread; "Recompute now" recomputes while the operator waits.
"""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta

import structlog

from sqlalchemy import select, text

from handlers.dunning import RECOVERED, TERMINAL_STATES
from worker.pure.clock import isoformat, utcnow

WINDOWS = (7, 30, 90)
WEEKS = 13
SNAPSHOT_NAME = "recovery"
SNAPSHOT_TTL = timedelta(minutes=5)
log = structlog.get_logger("worker.console.recovery")


def _hours(db, start: str, end: str) -> str:
    if db.is_sqlite:
        return f"((julianday({end}) - julianday({start})) * 24.0)"
    return f"(EXTRACT(EPOCH FROM ({end} - {start})) / 3600.0)"


def _whole(db, expression: str) -> str:
    """The integer part of a non-negative number (PostgreSQL's CAST rounds; SQLite's truncates)."""
    return f"CAST({expression} AS INTEGER)" if db.is_sqlite else f"CAST(FLOOR({expression}) AS INTEGER)"


def _days_ago(db, column: str) -> str:
    """Whole days between `column` and :now: one small integer to group by (windows and weeks follow)."""
    return _whole(db, f"({_hours(db, column, ':now')} / 24.0)")


def _window(days_ago: int) -> int:
    """0 for the last 7 days, 1 for 7-30, 2 for 30-90."""
    return 0 if days_ago < 7 else 1 if days_ago < 30 else 2


def compute(runtime, now: datetime | None = None) -> dict:
    db = runtime.db
    now = now or utcnow()
    params = {"since": now - timedelta(days=max(WINDOWS)), "now": now}
    opened_ago = _days_ago(db, "opened_at")
    cohort_sql = text(f"""
        SELECT currency, state, {opened_ago} AS d, COUNT(*) AS n, SUM(COALESCE(recovered_amount, amount_due)) AS amount
        FROM cases WHERE opened_at >= :since
        GROUP BY currency, state, {opened_ago}""")
    hours = _whole(db, _hours(db, "first_failed_at", "closed_at"))
    recovered_sql = text(f"""
        SELECT currency, schedule, {opened_ago} AS d, {hours} AS h, COUNT(*) AS n
        FROM cases WHERE opened_at >= :since AND state = 'recovered' AND closed_at IS NOT NULL
        GROUP BY currency, schedule, {opened_ago}, {hours}""")
    paid_within = f"{_hours(db, 'e.sent_at', 'c.closed_at')} BETWEEN 0 AND 72"
    sent_ago = _days_ago(db, "e.sent_at")
    emails_sql = text(f"""
        SELECT e.template, {sent_ago} AS d, COUNT(*) AS n,
               SUM(CASE WHEN c.state = 'recovered' AND c.closed_at IS NOT NULL AND {paid_within}
                        THEN 1 ELSE 0 END) AS paid
        FROM emails e LEFT JOIN cases c ON c.id = e.case_id
        WHERE e.status = 'sent' AND e.sent_at >= :since
        GROUP BY e.template, {sent_ago}""")
    with db.reading(snapshot=True) as conn:
        cohort = [{**r, "w": _window(int(r["d"])), "wk": int(r["d"]) // 7}
                  for r in conn.execute(cohort_sql, params).mappings()]
        recovered = [{**r, "w": _window(int(r["d"]))} for r in conn.execute(recovered_sql, params).mappings()]
        emails = [{**r, "w": _window(int(r["d"]))} for r in conn.execute(emails_sql, params).mappings()]

    windows = {}
    for index, days in enumerate(WINDOWS):
        per_currency: dict[str, dict] = {}
        for row in cohort:
            if row["w"] > index:
                continue
            c = per_currency.setdefault(row["currency"], _empty())
            c["opened"] += row["n"]
            state = row["state"]
            if state in TERMINAL_STATES:
                c[state] += row["n"]
            else:
                c["open"] += row["n"]
            if state == RECOVERED:
                c["recovered_amount"] += int(row["amount"] or 0)
        histograms: dict[str, list[tuple[int, int]]] = {}
        for row in recovered:
            if row["w"] > index or row["currency"] not in per_currency:
                continue
            histograms.setdefault(row["currency"], []).append((int(row["h"] or 0), row["n"]))
            step = _step_name(runtime.policy, row["schedule"], int(row["h"] or 0) / 24.0)
            by_step = per_currency[row["currency"]]["by_step"]
            by_step[step] = by_step.get(step, 0) + row["n"]
        for currency, c in per_currency.items():
            c["rate"] = c["recovered"] / c["opened"] if c["opened"] else None
            c["median_days"] = _median_days(histograms.get(currency, []))
        templates: dict[str, dict] = {}
        for row in emails:
            if row["w"] > index:
                continue
            t = templates.setdefault(row["template"], {"sent": 0, "paid_3d": 0})
            t["sent"] += row["n"]
            t["paid_3d"] += int(row["paid"] or 0)
        windows[str(days)] = {"currencies": dict(sorted(per_currency.items())),
                              "templates": dict(sorted(templates.items()))}
    weeks = [{"week": i, "starts": isoformat(now - timedelta(days=7 * (i + 1))), "failed": 0, "recovered": 0}
             for i in range(WEEKS)]
    for row in cohort:
        if row["wk"] < WEEKS:
            weeks[row["wk"]]["failed"] += row["n"]
            if row["state"] == RECOVERED:
                weeks[row["wk"]]["recovered"] += row["n"]
    return {"computed_at": isoformat(now), "windows": windows, "weeks": list(reversed(weeks))}


def _empty() -> dict:
    return {"opened": 0, "recovered": 0, "uncollectible": 0, "voided": 0, "open": 0, "recovered_amount": 0,
            "by_step": {}}


def _step_name(policy, schedule: str, days: float) -> str:
    """The last step whose day had come `days` after the first failure."""
    try:
        steps = policy.schedule_named(schedule).steps
    except Exception:
        return "?"
    reached = [s for s in steps if s.day <= days]
    return reached[-1].email if reached else "before the first step"


def _median_days(histogram: list[tuple[int, int]]) -> float | None:
    """The median of whole hours to recover, in days (from a histogram of (hours, count))."""
    total = sum(n for _, n in histogram)
    if not total:
        return None

    def kth(k: int) -> int:  # the k-th smallest value, 1-indexed
        seen = 0
        for hours, n in sorted(histogram):
            seen += n
            if seen >= k:
                return hours
        return sorted(histogram)[-1][0]
    middle = (kth((total + 1) // 2) + kth(total // 2 + 1)) / 2
    return round(middle / 24.0, 1)


_refreshing = threading.Lock()


def snapshot(runtime, *, refresh: bool = False, now: datetime | None = None, background: bool = False) -> dict:
    """The recovery view from the shared snapshot.

    refresh=True recomputes now. Otherwise a fresh snapshot is returned as is; a stale one is
    returned as is too when `background` (the page), while one thread of this process recomputes
    it (a few seconds at a million cases); without a snapshot at all it is computed now.
    """
    db = runtime.db
    table = db.table("console_snapshots")
    now = now or utcnow()
    if not refresh:
        with db.reading() as conn:
            row = conn.execute(select(table.c.computed_at, table.c.body).where(table.c.name == SNAPSHOT_NAME)).first()
        if row is not None and now - row.computed_at < SNAPSHOT_TTL:
            return json.loads(row.body)
        if row is not None and background:
            if _refreshing.acquire(blocking=False):
                threading.Thread(target=_refresh_in_background, args=(runtime,), daemon=True,
                                 name="console-recovery").start()
            return json.loads(row.body)
    return _store(runtime, compute(runtime, now), now)


def _refresh_in_background(runtime) -> None:
    try:
        now = utcnow()
        _store(runtime, compute(runtime, now), now)
    except Exception as exc:  # the page keeps showing the last snapshot; the next view tries again
        log.warning("console.recovery_refresh_failed", error=str(exc)[:300])
    finally:
        _refreshing.release()


def _store(runtime, view: dict, now: datetime) -> dict:
    db = runtime.db
    table = db.table("console_snapshots")
    body = json.dumps(view, separators=(",", ":"))
    with db.transaction() as conn:
        stmt = db.insert_ignore(table, {"name": SNAPSHOT_NAME, "computed_at": now, "body": body}, "name")
        if conn.execute(stmt.returning(table.c.name)).first() is None:
            conn.execute(table.update().where(table.c.name == SNAPSHOT_NAME).values(computed_at=now, body=body))
    return view
