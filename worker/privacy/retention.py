"""Apply the policy's [retention]: `dunning data prune` and the scheduler's daily prune.

As of an instant `now` (the scheduler's clock, or `--at`):
  - a case closed more than closed_case_days ago is deleted with its transitions, emails,
    platform notices, payment links, card retries and invoice row;
  - an event processed (or ignored) more than event_days ago is deleted; one processed more
    than event_payload_days ago keeps only id, type, object id, created and status (its payload
    is replaced by worker/privacy/customer_data.stripped_payload): a re-delivery still dedupes on the id;
  - a finished email (sent, failed or cancelled) older than email_content_days loses its subject,
    bodies and recipient; template, step, times, status and provider id stay;
  - a card record older than closed_case_days that a newer record of the same card superseded.
Never pruned, whatever their age: open cases, events not processed (received, processing, failed
and never resolved), and outbox rows still to be delivered (pending, sending) with their case.

Why batches: every transaction touches at most BATCH rows (1,000), so the webhook's INSERT and
the workers' steps get the database between two batches even while millions of rows go. Scans
page with a cursor (received_at/closed_at, id), so a run reads each row once.

One host only: the daily run is claimed per UTC day by a guarded UPDATE of the `cursors` row
`retention.prune` (a lease row), and on PostgreSQL every prune also holds a session advisory
lock (pg_try_advisory_lock), so a manual `dunning data prune` and the scheduler's never overlap.
SQLite is one host by definition.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Callable, Iterator

import structlog
from sqlalchemy import and_, bindparam, exists, func, or_, select, text, true, update

from handlers.dunning import TERMINAL_STATES
from worker.infra import advisory_locks
from worker.pure.clock import utcnow
from worker.privacy.customer_data import REMOVED_MARK, stripped_payload

log = structlog.get_logger("worker.privacy.retention")

BATCH = 1000
CASE_PAGE = 200
LOCK_KEY = advisory_locks.RETENTION  # never the scheduler's: the leader starts the prune
CURSOR_NAME = "retention.prune"
UNDELIVERED = ("pending", "sending")
FINISHED_EMAIL = ("sent", "failed", "cancelled")
DONE_EVENT = ("processed", "ignored")
DUTY = 0.5  # share of the time a prune works; it rests the rest (see Pruner._breathe)
RESCRUB_DAYS = 3  # erasures this recent are scrubbed again: a row a concurrent job wrote meanwhile


class PruneBusy(RuntimeError):
    """Raised when another prune holds the lock (another host, or a manual run)."""


@contextmanager
def prune_lock(db) -> Iterator[None]:
    """PostgreSQL: a session advisory lock on an autocommit connection (no transaction held open)."""
    if db.is_sqlite:
        yield
        return
    conn = db.autocommit_connection()
    try:
        if not conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": LOCK_KEY}).scalar():
            raise PruneBusy("another prune is running (advisory lock held)")
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": LOCK_KEY})
    finally:
        conn.close()


def claim_day(db, now: datetime) -> bool:
    """True for the one caller that claims `now`'s UTC day for the daily prune (a lease row)."""
    cursors = db.table("cursors")
    day = now.date().isoformat()
    with db.transaction() as conn:
        conn.execute(db.insert_ignore(cursors, {"name": CURSOR_NAME, "value": "", "updated_at": now}, "name"))
        return conn.execute(update(cursors).where(cursors.c.name == CURSOR_NAME, cursors.c.value < day)
                            .values(value=day, updated_at=utcnow())).rowcount == 1


class Pruner:
    """One prune run as of `now`; `counts` says what was (or, dry, would be) removed per table."""

    def __init__(self, runtime, now: datetime, *, dry_run: bool = False, batch: int = BATCH,
                 pause: float = 0.0, duty: float = DUTY, should_stop: Callable[[], bool] = lambda: False):
        self.db, self.now, self.dry_run, self.duty = runtime.db, now, dry_run, duty
        self._since = time.monotonic()
        self.batch, self.pause, self.should_stop = min(batch, BATCH), pause, should_stop
        self.retention = runtime.policy.retention
        self.t = self.db.tables
        self.counts: dict[str, int] = {}

    def run(self) -> dict[str, int]:
        days = self.retention
        for name, cutoff, step in (
            ("cases", days.closed_case_days, self.closed_cases),
            ("events", days.event_days, self.old_events),
            ("events.payload", days.event_payload_days, self.event_payloads),
            ("emails.content", days.email_content_days, self.email_contents),
            ("cards", days.closed_case_days, self.superseded_cards),
        ):
            if self.should_stop():
                break
            step(self.now - timedelta(days=cutoff))
        self.recent_erasures(self.now - timedelta(days=RESCRUB_DAYS))
        if not self.dry_run:
            from worker.privacy.erasure import flush_sqlite
            flush_sqlite(self.db)
        log.info("retention.pruned", dry_run=self.dry_run, **{k.replace(".", "_"): v for k, v in self.counts.items()})
        return self.counts

    # -- helpers ------------------------------------------------------------------------------
    def _add(self, name: str, n: int) -> None:
        self.counts[name] = self.counts.get(name, 0) + n

    def _breathe(self) -> None:
        """Between two batches: rest as long as the last stretch of work took, over `duty`.

        At DUTY 0.5 the prune holds the database (and a core) at most half the time, whatever the
        machine's speed or load: webhooks and steps find it free between batches.
        """
        now = time.monotonic()
        worked = now - getattr(self, "_since", now)
        rest = worked * (1 - self.duty) / self.duty if 0 < self.duty < 1 else 0.0
        time.sleep(min(rest, 5.0) + self.pause)
        self._since = time.monotonic()

    def _delete_where(self, name: str, where) -> None:
        """Delete every row of `name` matching `where`, at most `batch` rows per transaction."""
        table = self.t[name]
        pk = list(table.primary_key.columns)[0]
        if self.dry_run:
            with self.db.reading() as conn:
                self._add(name, conn.execute(select(func.count()).select_from(table).where(where)).scalar())
            return
        while not self.should_stop():
            with self.db.transaction() as conn:
                ids = list(conn.execute(select(pk).where(where).limit(self.batch)).scalars())
                if ids:
                    conn.execute(table.delete().where(pk.in_(ids)))
            self._add(name, len(ids))
            if len(ids) < self.batch:
                return
            self._breathe()

    # -- the steps ----------------------------------------------------------------------------
    def closed_cases(self, cutoff: datetime) -> None:
        cases, emails, notices = self.t["cases"], self.t["emails"], self.t["platform_notices"]
        undelivered = or_(
            exists().where(or_(emails.c.case_id == cases.c.id, emails.c.invoice_id == cases.c.invoice_id),
                           emails.c.status.in_(UNDELIVERED)),
            exists().where(notices.c.case_id == cases.c.id, notices.c.status.in_(UNDELIVERED)))
        cursor: tuple | None = None
        self.counts.setdefault("cases", 0)
        while not self.should_stop():
            stmt = (select(cases.c.id, cases.c.invoice_id, cases.c.closed_at)
                    .where(cases.c.state.in_(TERMINAL_STATES), cases.c.closed_at < cutoff, ~undelivered)
                    .order_by(cases.c.closed_at, cases.c.id).limit(CASE_PAGE))
            if cursor:
                stmt = stmt.where(or_(cases.c.closed_at > cursor[0],
                                      and_(cases.c.closed_at == cursor[0], cases.c.id > cursor[1])))
            with self.db.reading() as conn:
                page = conn.execute(stmt).all()
            if not page:
                return
            cursor = (page[-1].closed_at, page[-1].id)
            case_ids = [r.id for r in page]
            invoice_ids = [r.invoice_id for r in page]
            t = self.t
            for name, where in (
                ("case_transitions", t["case_transitions"].c.case_id.in_(case_ids)),
                ("emails", or_(emails.c.case_id.in_(case_ids), emails.c.invoice_id.in_(invoice_ids))),
                ("platform_notices", notices.c.case_id.in_(case_ids)),
                ("payment_links", t["payment_links"].c.invoice_id.in_(invoice_ids)),
                ("card_retries", or_(t["card_retries"].c.case_id.in_(case_ids),
                                     t["card_retries"].c.invoice_id.in_(invoice_ids))),
                ("invoices", t["invoices"].c.id.in_(invoice_ids)),
                ("cases", cases.c.id.in_(case_ids)),  # last: a run cut short leaves the case to find again
            ):
                self._delete_where(name, where)
            if len(page) < CASE_PAGE:
                return

    def _event_pages(self, cutoff: datetime, extra, with_payload: bool, cursor_on: bool) -> Iterator[list]:
        """Pages of done events received and processed before `cutoff`, oldest first.

        One status at a time: `status = s ORDER BY received_at` walks the (status, received_at)
        index in order and stops after a page; `status IN (...)` would sort every candidate row for
        every page. Deleting needs no cursor (deleted rows are gone); updating pages on
        (received_at, id).
        """
        events = self.t["events"]
        cols = [events.c.id, events.c.received_at] + ([events.c.payload] if with_payload else [])
        for status in DONE_EVENT:
            cursor: tuple | None = None
            while not self.should_stop():
                stmt = (select(*cols)
                        .where(events.c.status == status, events.c.received_at < cutoff,
                               func.coalesce(events.c.processed_at, events.c.received_at) < cutoff, extra)
                        .order_by(events.c.received_at, events.c.id).limit(self.batch))
                if cursor:
                    stmt = stmt.where(events.c.received_at >= cursor[0],
                                      or_(events.c.received_at > cursor[0], events.c.id > cursor[1]))
                with self.db.reading() as conn:
                    page = conn.execute(stmt).all()
                if not page:
                    break
                if cursor_on:
                    cursor = (page[-1].received_at, page[-1].id)
                yield page
                if len(page) < self.batch:
                    break
                self._breathe()

    def old_events(self, cutoff: datetime) -> None:
        events = self.t["events"]
        self.counts.setdefault("events", 0)
        for page in self._event_pages(cutoff, true(), with_payload=False, cursor_on=self.dry_run):
            if not self.dry_run:
                with self.db.transaction() as conn:
                    conn.execute(events.delete().where(events.c.id.in_([r.id for r in page]),
                                                       events.c.status.in_(DONE_EVENT)))
            self._add("events", len(page))

    def event_payloads(self, cutoff: datetime) -> None:
        events = self.t["events"]
        self.counts.setdefault("events.payload", 0)
        not_stripped = ~events.c.payload.like(REMOVED_MARK.replace("_", "\\_") + "%", escape="\\")
        done = or_(*[events.c.status == s for s in DONE_EVENT])  # no IN: an executemany cannot expand it
        stmt = (update(events).where(events.c.id == bindparam("_id"), done)
                .values(payload=bindparam("_payload")))
        for page in self._event_pages(cutoff, not_stripped, with_payload=True, cursor_on=True):
            if not self.dry_run:
                with self.db.transaction() as conn:
                    conn.execute(stmt, [{"_id": r.id, "_payload": stripped_payload(r.payload, "retention")}
                                        for r in page])
            self._add("events.payload", len(page))

    def email_contents(self, cutoff: datetime) -> None:
        emails = self.t["emails"]
        self.counts.setdefault("emails.content", 0)
        held = or_(emails.c.subject != "", emails.c.body_text != "", emails.c.body_html != "",
                   emails.c.recipient != "")
        where = and_(emails.c.status.in_(FINISHED_EMAIL),
                     func.coalesce(emails.c.sent_at, emails.c.created_at) < cutoff, held)
        if self.dry_run:
            with self.db.reading() as conn:
                self._add("emails.content", conn.execute(select(func.count()).select_from(emails).where(where)).scalar())
            return
        while not self.should_stop():
            with self.db.transaction() as conn:
                ids = list(conn.execute(select(emails.c.id).where(where).limit(self.batch)).scalars())
                if ids:
                    conn.execute(update(emails).where(emails.c.id.in_(ids), emails.c.status.in_(FINISHED_EMAIL))
                                 .values(subject="", body_text="", body_html="", recipient=""))
            self._add("emails.content", len(ids))
            if len(ids) < self.batch:
                return
            self._breathe()

    def recent_erasures(self, since: datetime) -> None:
        """Scrub recently erased customers again (a payment-link job or a step that committed a row
        just after the erasure read the table leaves it addressed but never sent: this clears it)."""
        from worker.privacy.erasure import scrub
        erasures = self.t["erasures"]
        self.counts.setdefault("erasures.rescrubbed", 0)
        with self.db.reading() as conn:
            ids = list(conn.execute(select(erasures.c.customer_id).where(erasures.c.erased_at >= since)).scalars())
        for customer_id in ids:
            if self.dry_run or self.should_stop():
                break
            with self.db.transaction() as conn:
                self._add("erasures.rescrubbed", sum(scrub(conn, self.t, customer_id, include_events=False).values()))

    def superseded_cards(self, cutoff: datetime) -> None:
        cards = self.t["cards"]
        newer = cards.alias("newer")
        superseded = exists().where(newer.c.customer_id == cards.c.customer_id,
                                    newer.c.payment_method_id == cards.c.payment_method_id,
                                    newer.c.recorded_at > cards.c.recorded_at)
        self.counts.setdefault("cards", 0)
        self._delete_where("cards", and_(cards.c.recorded_at < cutoff, superseded))


def prune(runtime, now: datetime, *, dry_run: bool = False, pause: float = 0.0, duty: float = DUTY,
          should_stop: Callable[[], bool] = lambda: False) -> dict[str, int]:
    """One prune as of `now` under the lock; raises PruneBusy when another one runs."""
    with prune_lock(runtime.db):
        return Pruner(runtime, now, dry_run=dry_run, pause=pause, duty=duty, should_stop=should_stop).run()


class DailyPrune:
    """The scheduler's daily prune: claimed once per UTC day across hosts, run in a thread.

    A thread, because a prune of millions of rows takes minutes and the scheduler's pass (due
    steps, outbox sweeps) must go on meanwhile.
    """

    def __init__(self, runtime, stop: threading.Event, pause: float = 0.0):
        self.runtime, self.stop, self.pause = runtime, stop, pause
        self.thread: threading.Thread | None = None

    def maybe_start(self, now: datetime) -> bool:
        if self.thread is not None and self.thread.is_alive():
            return False
        try:
            if not claim_day(self.runtime.db, now):
                return False
        except Exception as exc:  # noqa: BLE001 - the database may be down: try again next pass
            log.warning("retention.claim_failed", error=f"{type(exc).__name__}: {exc}"[:300])
            return False
        self.thread = threading.Thread(target=self._run, args=(now,), name="daily-prune", daemon=True)
        self.thread.start()
        return True

    def _run(self, now: datetime) -> None:
        try:
            prune(self.runtime, now, pause=self.pause, should_stop=self.stop.is_set)
        except PruneBusy:
            log.info("retention.skipped_busy")
        except Exception as exc:  # noqa: BLE001 - logged; tomorrow's run starts over
            log.error("retention.failed", error=f"{type(exc).__name__}: {exc}"[:500])
