"""Cursor rows: a named JSON value in the `cursors` table, where a long or periodic job keeps its place.

The monthly card scan (worker/scheduling/card_expiry.py) keeps the month and the last card it saw; a backfill
(worker/intake/backfill.py) keeps its page per event-type group, so an interrupted run resumes there.
"""

from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy import Connection, select, update


def read(conn: Connection, db, name: str) -> dict | None:
    """The cursor's value; None when there is none yet or it cannot be read (start from scratch)."""
    cursors = db.table("cursors")
    value = conn.execute(select(cursors.c.value).where(cursors.c.name == name)).scalar()
    try:
        parsed = json.loads(value) if value else None
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def write(conn: Connection, db, name: str, value: dict, now: datetime) -> None:
    """Create or replace the cursor, in the caller's transaction."""
    cursors = db.table("cursors")
    text = json.dumps(value, sort_keys=True)
    if not db.insert_new(conn, cursors, {"name": name, "value": text, "updated_at": now}, "name"):
        conn.execute(update(cursors).where(cursors.c.name == name).values(value=text, updated_at=now))
