"""One scheduler leads at a time, so several hosts may each run one for availability.

On PostgreSQL the leader holds a session advisory lock on a connection of its own, kept open for
as long as it leads: if the process dies or its connection drops, PostgreSQL releases the lock
and a follower takes it on its next pass (within one SCHEDULER_INTERVAL). A follower does
nothing but try. On SQLite there is one host by definition, so every scheduler leads (two on one
host are still safe: each job is idempotent, only wasteful).
"""

from __future__ import annotations

import structlog
from sqlalchemy import text

from worker.infra import advisory_locks

log = structlog.get_logger("worker.scheduling.leadership")

SCHEDULER_LOCK = advisory_locks.SCHEDULER


class Leadership:
    """`is_leader()` before each pass: True while this process holds the scheduler lock."""

    def __init__(self, db, key: int = SCHEDULER_LOCK):
        self.db = db
        self.key = key
        self._conn = None

    def is_leader(self) -> bool:
        if self.db.is_sqlite:
            return True
        try:
            if self._conn is not None:
                self._conn.execute(text("SELECT 1"))  # still connected, so still holding the lock
                return True
            conn = self.db.autocommit_connection()
            if conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": self.key}).scalar():
                self._conn = conn
                log.info("scheduler.leading")
                return True
            conn.close()
            return False
        except Exception as exc:  # noqa: BLE001 - lost connection: lost the lock; try again next pass
            log.warning("scheduler.leadership_lost", error=str(exc)[:200])
            self.release()
            return False

    def release(self) -> None:
        if self._conn is not None:
            try:
                # Unlock first: a closed session frees its locks only once its backend has exited,
                # a moment after the socket closes, and a follower must not find it still held.
                self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
            except Exception:  # noqa: BLE001 - the session is gone already, and its lock with it
                pass
            try:
                # End the session, not just return it to the pool: nothing of it may outlive leading.
                self._conn.invalidate()
                self._conn.close()
            except Exception:  # noqa: BLE001
                pass
            self._conn = None
