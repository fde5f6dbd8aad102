"""Record what the service sends to PostgreSQL: statement text, parameters and transactions.

A SQLAlchemy event listener on the engine (statements with their parameters, the transaction each
ran in and how it ended), so the floor scenario (bench/floor.py) replays exactly the statements the
real code path issued, in the same transactions. tests/support/sql_capture.py counts with the same
recorder (the statement ceilings of tests/integration/test_statement_count.py).

A transaction is `autocommit` when its connection runs in AUTOCOMMIT (the webhook's single
INSERT): there PostgreSQL sees bare statements, no BEGIN/COMMIT.
"""

from __future__ import annotations

import base64
import contextlib
import threading
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal

from sqlalchemy import event


@dataclass
class Transaction:
    part: str  # what ran it: "webhook", or the actor's name
    autocommit: bool
    statements: list[tuple[str, object, bool]] = field(default_factory=list)  # (sql, parameters, executemany)
    end: str = "commit"  # commit | rollback
    begun: bool = True  # False: a statement run outside any begin, a transaction of its own

    def as_json(self) -> dict:
        return {"part": self.part, "autocommit": self.autocommit, "end": self.end,
                "statements": [[sql, encode(params), many] for sql, params, many in self.statements]}


class Trace:
    """Transactions in the order they ended, tagged with the part of the work set by `part()`."""

    def __init__(self):
        self.transactions: list[Transaction] = []
        self.current_part = "unknown"
        self._open: dict[int, Transaction] = {}

    @contextlib.contextmanager
    def part(self, name: str):
        previous, self.current_part = self.current_part, name
        try:
            yield self
        finally:
            self.current_part = previous

    def take(self) -> list[Transaction]:
        """The transactions recorded so far (open ones included, as they stand), and forget them."""
        done = self.transactions + list(self._open.values())
        self.transactions, self._open = [], {}
        return done


@contextlib.contextmanager
def tracing(engine):
    """Record what `engine` runs on this thread while the block runs."""
    trace = Trace()
    thread = threading.get_ident()

    def autocommit(conn) -> bool:
        try:
            return conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT"
        except Exception:  # noqa: BLE001 - an odd connection: treat as a transaction
            return False

    def on_begin(conn):
        if threading.get_ident() == thread:
            trace._open[id(conn)] = Transaction(trace.current_part, autocommit(conn))

    def on_end(end):
        def handler(conn):
            if threading.get_ident() == thread and id(conn) in trace._open:
                tx = trace._open.pop(id(conn))
                tx.end = end
                if tx.statements:  # SQLAlchemy's autobegin with nothing run sends nothing
                    trace.transactions.append(tx)
        return handler

    def on_execute(conn, cursor, statement, parameters, context, executemany):
        if threading.get_ident() != thread:
            return
        tx = trace._open.get(id(conn))
        if tx is None:  # outside any begin: a statement of its own
            tx = Transaction(trace.current_part, True, begun=False)
            trace.transactions.append(tx)
        tx.statements.append((statement, parameters, bool(executemany)))

    listeners = [("begin", on_begin), ("commit", on_end("commit")), ("rollback", on_end("rollback")),
                 ("before_cursor_execute", on_execute)]
    for name, fn in listeners:
        event.listen(engine, name, fn)
    try:
        yield trace
    finally:
        for name, fn in listeners:
            event.remove(engine, name, fn)


# -- parameters as JSON (and back), types kept --------------------------------------------------
def encode(value):
    if isinstance(value, dict):
        return {"$map": {k: encode(v) for k, v in value.items()}}
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    if isinstance(value, datetime):
        return {"$dt": value.isoformat()}
    if isinstance(value, date):
        return {"$date": value.isoformat()}
    if isinstance(value, time):
        return {"$time": value.isoformat()}
    if isinstance(value, timedelta):
        return {"$td": value.total_seconds()}
    if isinstance(value, Decimal):
        return {"$dec": str(value)}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$b64": base64.b64encode(bytes(value)).decode()}
    return value


def decode(value, text=lambda s: s):
    """Back to Python values; `text` rewrites every string value on the way (ids for a replay)."""
    if isinstance(value, list):
        return [decode(v, text) for v in value]
    if isinstance(value, str):
        return text(value)
    if not isinstance(value, dict):
        return value
    if "$map" in value:
        return {k: decode(v, text) for k, v in value["$map"].items()}
    if "$dt" in value:
        return datetime.fromisoformat(value["$dt"])
    if "$date" in value:
        return date.fromisoformat(value["$date"])
    if "$time" in value:
        return time.fromisoformat(value["$time"])
    if "$td" in value:
        return timedelta(seconds=value["$td"])
    if "$dec" in value:
        return Decimal(value["$dec"])
    if "$b64" in value:
        return base64.b64decode(value["$b64"])
    raise ValueError(f"unknown encoded value {value!r}")
