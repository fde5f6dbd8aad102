"""The events table: store each Stripe event once, before anyone acts on it.

Dedupe is the primary key on Stripe's event id (INSERT ... ON CONFLICT DO NOTHING), so two
deliveries racing in two web processes still store one row and enqueue one message.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select, update

from handlers.context import StripeEvent
from worker.pure.clock import utcnow
from worker.infra.db import Database
from worker.observe.log_context import ids_from_event_object

_CONTROL_CHARS = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")  # and lone surrogates: no database stores them
MAX_CREATED = 253402300799  # 9999-12-31T23:59:59Z: later is no Stripe timestamp (and 2^63 broke the INSERT)


class InvalidEvent(ValueError):
    """Raised when a verified body is not a Stripe event (message says which field is wrong)."""


@dataclass(frozen=True)
class EventEnvelope:
    id: str
    type: str
    created: int
    api_version: str | None
    livemode: bool
    raw: str
    object_id: str | None = None  # data.object.id: the console finds a case's events by it (indexed)
    customer_id: str | None = None  # the customer it is about: processing holds it first (message_args)


def parse_envelope(raw: str, known_types: frozenset[str] | None = None) -> EventEnvelope:
    """Check the fields every event must have; the object itself is checked by its handler.

    With `known_types`, an event of another type (stored as ignored, never handled) only needs a
    `data` object: old samples such as `account.updated` with an empty `data` are still events.
    """
    try:
        payload = json.loads(raw)
    except ValueError as exc:
        raise InvalidEvent(f"body is not JSON: {getattr(exc, 'msg', exc)}") from None
    except RecursionError:  # nesting deeper than the parser's stack: not an event Stripe sends
        raise InvalidEvent("body is not JSON: nested too deeply") from None
    if not isinstance(payload, dict):
        raise InvalidEvent("body is not a JSON object")
    if payload.get("object") not in ("event", None):
        raise InvalidEvent("object is not 'event'")
    event_id, event_type, created = payload.get("id"), payload.get("type"), payload.get("created")
    if not isinstance(event_id, str) or not event_id.startswith("evt_") or len(event_id) > 255:
        raise InvalidEvent("id must be a Stripe event id (evt_...)")
    if not isinstance(event_type, str) or not event_type or len(event_type) > 255:
        raise InvalidEvent("type must be a non-empty string")
    if _CONTROL_CHARS.search(event_id) or _CONTROL_CHARS.search(event_type):
        raise InvalidEvent("id and type must not contain control characters")  # PostgreSQL TEXT refuses NUL
    if not isinstance(created, int) or isinstance(created, bool) or not 0 <= created <= MAX_CREATED:
        raise InvalidEvent("created must be a unix timestamp")
    data = payload.get("data")
    if not isinstance(data, dict):
        raise InvalidEvent("data must be an object")
    handled = known_types is None or event_type in known_types
    if handled and not isinstance(data.get("object"), dict):
        raise InvalidEvent("data.object must be an object")
    api_version = payload.get("api_version")
    return EventEnvelope(
        id=event_id, type=event_type, created=created,
        api_version=storable(api_version)[:64] if isinstance(api_version, str) else None,
        livemode=bool(payload.get("livemode")), raw=raw, object_id=_object_id(data),
        customer_id=_customer_id(data),
    )


def _customer_id(data: dict) -> str | None:
    obj = data.get("object")
    try:
        value = ids_from_event_object(obj).get("customer_id") if isinstance(obj, dict) else None
    except (AttributeError, TypeError, ValueError):  # a malformed object: its handler says so
        return None
    return value if isinstance(value, str) and 0 < len(value) <= 255 else None


def message_args(envelope: EventEnvelope) -> tuple:
    """The process_event message of a stored event: its id, and the customer it names, so processing
    holds that customer without reading the event first (issue 17). An id alone works too."""
    return (envelope.id, envelope.customer_id) if envelope.customer_id else (envelope.id,)


def _object_id(data: dict) -> str | None:
    obj = data.get("object")
    value = obj.get("id") if isinstance(obj, dict) else None
    if isinstance(value, str) and 0 < len(value) <= 255 and not _CONTROL_CHARS.search(value):
        return value
    return None


def store_event(db: Database, envelope: EventEnvelope, *, known_type: bool, source: str = "webhook") -> bool:
    """Store the event; True when it is new. Unknown types are stored as `ignored`."""
    table = db.table("events")
    row = {
        "id": envelope.id, "type": envelope.type, "api_version": envelope.api_version,
        "created": envelope.created, "livemode": envelope.livemode, "payload": envelope.raw,
        "source": source, "received_at": utcnow(),
        "status": "received" if known_type else "ignored", "attempts": 0,
    }
    if "object_id" in table.c:  # a database made before the column: stored without it
        row["object_id"] = envelope.object_id
    return db.insert_new_committed(table, row, "id")  # one statement: stored and committed before the 2xx


def mark_enqueued(db: Database, event_id: str) -> None:
    table = db.table("events")
    with db.transaction() as conn:
        conn.execute(update(table).where(table.c.id == event_id).values(enqueued_at=utcnow()))


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(value):
    """`value` with every string (and key) storable in PostgreSQL TEXT and SQLite alike: NUL and
    lone surrogates (JSON may carry both as escapes) become U+FFFD. PostgreSQL refuses them where
    SQLite stores them, so the same event was processed on one and failed on the other."""
    if isinstance(value, str):
        return _UNSTORABLE.sub("\ufffd", value) if _UNSTORABLE.search(value) else value
    if isinstance(value, dict):
        return {storable(k): storable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [storable(v) for v in value]
    return value


# In JSON text, NUL and lone surrogates can only arrive as \\u escapes (a raw control character is
# invalid JSON, and a str read back from the database holds no lone surrogate): a payload without
# one of these escapes needs no walk of every string (issue 17: the walk cost more than the parse).
_ESCAPED_UNSTORABLE = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")


def load_event(row) -> StripeEvent:
    text = row["payload"]
    payload = json.loads(text)
    if _ESCAPED_UNSTORABLE.search(text):
        payload = storable(payload)
    return StripeEvent(id=row["id"], type=row["type"], created=row["created"],
                       api_version=row["api_version"], livemode=bool(row["livemode"]), payload=payload)


def stale_event_ids(db: Database, now: datetime, received_grace: timedelta, limit: int = 500) -> list[str]:
    """Events a broker may have lost: received long ago and not enqueued since (a worker that died
    mid-handler leaves its event `received`), or a lapsed lease (`processing`: written only by a
    version before issue 17, whose claim had a transaction of its own)."""
    table = db.table("events")
    cutoff = now - received_grace
    stmt = (select(table.c.id).where(or_(
        and_(table.c.status == "received", table.c.received_at <= cutoff,
             or_(table.c.enqueued_at.is_(None), table.c.enqueued_at <= cutoff)),
        and_(table.c.status == "processing", table.c.lease_until <= now),
    )).order_by(table.c.received_at).limit(limit))
    with db.reading() as conn:
        return list(conn.execute(stmt).scalars())


def requeue_events(runtime, event_ids: list[str] | None) -> list[str]:
    """Put events (or, with None, every failed event) back to received and enqueue them.

    Replaying a processed event runs its handler again; handlers are idempotent (effects carry
    unique keys), so this repairs without duplicating.
    """
    db = runtime.db
    table = db.table("events")
    with db.transaction() as conn:
        if event_ids is None:
            event_ids = list(conn.execute(select(table.c.id).where(table.c.status == "failed")).scalars())
        if event_ids:
            conn.execute(update(table).where(table.c.id.in_(event_ids))
                         .values(status="received", last_error=None, lease_until=None, enqueued_at=utcnow()))
    for event_id in event_ids:
        runtime.actors.process_event.send(event_id)
    return event_ids
