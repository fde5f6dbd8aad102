"""Capture the SQL statements and transactions a piece of work issues, with SQLAlchemy events.

`capture(engine)` records every statement sent to the database (before_cursor_execute) with the
transaction it ran in (begin/commit/rollback on the connection, including SQLAlchemy's autobegin),
so a test can assert a ceiling and a benchmark can replay exactly the same work.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field

from sqlalchemy import event


@dataclass
class Captured:
    transactions: list[list[str]] = field(default_factory=list)  # statements, per transaction
    loose: list[str] = field(default_factory=list)  # statements outside any begin (autocommit)
    _open: dict[int, list[str]] = field(default_factory=dict)

    @property
    def statements(self) -> list[str]:
        return [s for t in self.transactions for s in t] + self.loose

    def summary(self) -> str:
        lines = [f"{len(self.statements)} statements in {len(self.transactions)} transactions"
                 f" (+{len(self.loose)} autocommit)"]
        for n, stmts in enumerate(self.transactions, 1):
            lines.append(f"-- transaction {n}")
            lines += ["   " + " ".join(s.split())[:160] for s in stmts]
        lines += ["-- autocommit: " + " ".join(s.split())[:160] for s in self.loose]
        return "\n".join(lines)


@contextlib.contextmanager
def capture(engine):
    """Record what `engine` is asked to run on this thread while the block runs."""
    got = Captured()
    thread = threading.get_ident()

    def on_begin(conn):
        if threading.get_ident() == thread:
            got._open[id(conn)] = []

    def on_end(conn):
        if threading.get_ident() == thread and id(conn) in got._open:
            got.transactions.append(got._open.pop(id(conn)))

    def on_execute(conn, cursor, statement, parameters, context, executemany):
        if threading.get_ident() != thread:
            return
        bucket = got._open.get(id(conn))
        (bucket if bucket is not None else got.loose).append(statement)

    listeners = [("begin", on_begin), ("commit", on_end), ("rollback", on_end),
                 ("before_cursor_execute", on_execute)]
    for name, fn in listeners:
        event.listen(engine, name, fn)
    try:
        yield got
    finally:
        for name, fn in listeners:
            event.remove(engine, name, fn)
        for stmts in got._open.values():  # a transaction still open when the block ended
            got.transactions.append(stmts)
