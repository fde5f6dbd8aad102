"""Capture the SQL statements and transactions a piece of work issues, for a test to assert a ceiling.

`capture(engine)` is bench/sql_trace.py's recorder (SQLAlchemy's begin/commit/rollback and
before_cursor_execute events on this thread: the one the floor benchmark replays), read as the
statement texts per transaction. A transaction that ran nothing is not counted (SQLAlchemy's
autobegin with nothing run sends nothing); one still open when the block ends is. A statement run
in autocommit (`Database.autocommit()`, or outside any begin) commits on its own: it is counted as
`loose`, not as a transaction (it costs no BEGIN and COMMIT round trips).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from bench.sql_trace import tracing


@dataclass
class Captured:
    transactions: list[list[str]] = field(default_factory=list)  # statements, per transaction
    loose: list[str] = field(default_factory=list)  # statements committed on their own (autocommit)

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
    with tracing(engine) as trace:
        try:
            yield got
        finally:
            for tx in trace.take():
                texts = [sql for sql, _parameters, _many in tx.statements]
                if tx.begun and not tx.autocommit:
                    got.transactions.append(texts)
                else:
                    got.loose += texts
