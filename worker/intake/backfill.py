"""Backfill from Stripe's Events API: what a webhook outage missed is fetched, stored and processed.

Stripe keeps events for 30 days and lists them newest first (GET /v1/events, `types[]` at
most 20 per request, `created[gte]`, `starting_after` to page). Each page's unseen events are
stored exactly like a webhook delivery (worker.intake.event_store.store_event, source="backfill": the
primary key dedupes against webhooks and earlier runs) and the progress is saved in the
`cursors` table after every page, so an interrupted run resumes where it stopped. When every
page is stored, the events this backfill stored and nobody processed yet are enqueued oldest
first, the order a live delivery would have had. Stripe is called through the one gateway
(worker.stripe.gateway: its timeouts, retries and error sorting).

Idempotent: a second run stores nothing new and enqueues nothing (the events are processed).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable

import structlog
from sqlalchemy import select

from handlers.registry import known_types
from worker.infra import cursors
from worker.pure.clock import to_unix, utcnow
from worker.intake.event_store import InvalidEvent, mark_enqueued, parse_envelope, store_event
from worker.stripe.gateway import StripeGateway, gateway

MAX_TYPES_PER_REQUEST = 20  # Stripe's limit on `types`
PAGE_SIZE = 100
log = structlog.get_logger("worker.intake.backfill")


@dataclass
class BackfillResult:
    since: int
    pages: int = 0
    seen: int = 0
    stored: int = 0
    already_stored: int = 0
    enqueued: int = 0
    resumed: bool = False
    stored_ids: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"since": self.since, "pages": self.pages, "seen": self.seen, "stored": self.stored,
                "already_stored": self.already_stored, "enqueued": self.enqueued, "resumed": self.resumed}


def type_groups(types=None) -> list[list[str]]:
    """The dunning-relevant event types, sorted, in groups Stripe accepts in one request."""
    names = sorted(types if types is not None else known_types())
    return [names[i:i + MAX_TYPES_PER_REQUEST] for i in range(0, len(names), MAX_TYPES_PER_REQUEST)]


def _cursor_name(since: int, group: list[str]) -> str:
    return f"backfill:events:{since}:{','.join(group)}"[:500]


def backfill(runtime, since: datetime, *, stripe: StripeGateway | None = None,
             on_progress: Callable[[int], None] | None = None) -> BackfillResult:
    """Fetch the events created at or after `since` that we do not have; store and enqueue them.

    on_progress(seconds) is called as the listing walks back in time (for a progress bar whose
    length is len(type_groups()) * (now - since) seconds).
    """
    stripe = stripe or gateway(runtime)
    db = runtime.db
    since_unix = to_unix(since)
    known = known_types()
    result = BackfillResult(since=since_unix)
    now_unix = to_unix(utcnow())
    for group in type_groups(known):
        name = _cursor_name(since_unix, group)
        with db.reading() as conn:
            cursor = cursors.read(conn, db, name)
        starting_after, frontier = None, now_unix
        if cursor and not cursor.get("completed"):
            starting_after, frontier = cursor.get("starting_after"), cursor.get("frontier", now_unix)
            result.resumed = result.resumed or bool(starting_after)
            if on_progress and frontier < now_unix:
                on_progress(now_unix - frontier)
        while True:
            listed, has_more = stripe.list_events(group, since_unix, PAGE_SIZE, starting_after)
            result.pages += 1
            for event in listed:
                result.seen += 1
                try:
                    envelope = parse_envelope(json.dumps(event, separators=(",", ":")))
                except InvalidEvent as exc:
                    log.warning("backfill.invalid_event", event_id=event.get("id"), error=str(exc))
                    continue
                if store_event(db, envelope, known_type=envelope.type in known, source="backfill"):
                    result.stored += 1
                    result.stored_ids.append(envelope.id)
                else:
                    result.already_stored += 1
            if listed:
                starting_after = listed[-1]["id"]
                oldest = max(since_unix, int(listed[-1]["created"]))
                if on_progress and oldest < frontier:
                    on_progress(frontier - oldest)
                frontier = min(frontier, oldest)
            more = has_more and bool(listed)
            with db.transaction() as conn:
                cursors.write(conn, db, name, {"since": since_unix, "starting_after": starting_after,
                                               "frontier": frontier, "completed": not more}, utcnow())
            log.info("backfill.page", types=len(group), events=len(listed), has_more=more)
            if not more:
                break
        if on_progress and frontier > since_unix:
            on_progress(frontier - since_unix)
    result.enqueued = enqueue_unprocessed(runtime, since_unix)
    log.info("backfill.done", **result.as_dict())
    return result


def enqueue_unprocessed(runtime, since_unix: int) -> int:
    """Enqueue, oldest first, the backfilled events still `received` (this run's and an interrupted one's)."""
    events = runtime.db.table("events")
    with runtime.db.reading() as conn:
        ids = list(conn.execute(
            select(events.c.id).where(events.c.source == "backfill", events.c.status == "received",
                                      events.c.created >= since_unix)
            .order_by(events.c.created, events.c.id)).scalars())
    for event_id in ids:
        runtime.actors.process_event.send(event_id)
        mark_enqueued(runtime.db, event_id)
    return len(ids)
