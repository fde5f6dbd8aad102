"""Statements built once, run on the driver's cursor (PostgreSQL): the hot path without the
Connection's per-call work.

A statement built once (bound parameters, `functools.lru_cache` or `Database._built_once`) is
compiled by SQLAlchemy once per set of parameter names, for the connection's dialect; `run` then
executes that SQL on the psycopg cursor of the Connection's own transaction. What it skips is what
profiles showed costing as much CPU as the driver itself (issue 17): the execution context, the
parameter processing of every bind, the result's metadata. What it keeps:
- the same SQL SQLAlchemy would send (its compiler wrote it) and the same transaction;
- errors as SQLAlchemy raises them (`DBAPIError` subclasses, a lost connection invalidating the
  pool), through the Connection's own handler;
- `before_cursor_execute` listeners (the statement counts and the benchmark's trace see it).

Each statement is prepared on the server at its first run on a connection (`prepare=True`), as
the floor of issue 17's benchmark runs them, not at psycopg's default sixth run: its SQL never
changes, and until it is prepared PostgreSQL parses and plans it on every run. With the default,
a worker's 30-odd pooled connections ran the first five of each statement unprepared (a quarter
of the statements of a freshly started worker's first few thousand events), and five more after
each ROLLBACK or pool recycle (psycopg then discards its prepared statements). In a long steady
run the difference is small; it is the warm-up that it removes.

Bind processors run as SQLAlchemy runs them (Boolean's strict check). A statement whose compiled
form needs more than that (an expanding IN, escaped names, a result processor) runs through
`Connection.execute` as before, and so does every statement on SQLite (its dates are processed).
Results answer the few calls the callers use: `mappings()` (`first`, `all`, `one`), `first`, `one`,
`scalar`, `rowcount`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection

_PLANS = "_dunning_driver_plans"       # on the statement: (itself, {(dialect, parameter names): _Plan | None})
_CURSOR = "dunning.driver_sql.cursor"  # in a pooled connection's info: its reused cursor


@dataclass
class _Plan:
    sql: str
    defaults: dict[str, Any]  # the compiled statement's own values (constants bound as parameters)
    processors: tuple[tuple[str, Any], ...]  # (name, bind processor): Boolean's strict check, say
    names: list[str] | None = field(default=None, compare=False, repr=False)  # of its result, once read

    def column_names(self, result) -> list[str]:
        """The names of the result's columns, read from the first result only: psycopg's
        `cursor.description` builds a `Column` (its type looked up) for every column of every
        result, 34 µs for a 31-column row. Read again if the count ever differs (a `SELECT *`
        after a column was added); a new list, so a result already holding the old one keeps it."""
        if self.names is None or len(self.names) != result.nfields:
            self.names = [result.fname(i).decode() for i in range(result.nfields)]
        return self.names

    def bind(self, params: dict[str, Any]) -> dict[str, Any]:
        """The driver's parameters: the statement's own values, then `params`, processed."""
        values = dict(self.defaults)
        values.update(params)
        for name, process in self.processors:
            values[name] = process(values[name])
        return values


class DriverResult:
    """The rows of one statement run on the cursor, as the callers read SQLAlchemy's results."""

    def __init__(self, names: list[str], rows: list[tuple], rowcount: int):
        self._names, self._rows, self.rowcount = names, rows, rowcount

    def mappings(self) -> "DriverResult":
        return _Mappings(self._names, self._rows, self.rowcount)

    def first(self):
        return self._rows[0] if self._rows else None

    def one(self):
        if len(self._rows) != 1:
            raise ValueError(f"expected one row, got {len(self._rows)}")
        return self._rows[0]

    def all(self) -> list:
        return list(self._rows)

    def scalar(self):
        return self._rows[0][0] if self._rows else None


class _Mappings(DriverResult):
    def __init__(self, names: list[str], rows: list[tuple], rowcount: int):
        super().__init__(names, [dict(zip(names, row)) for row in rows], rowcount)


def run(conn: Connection, stmt, params: dict[str, Any]):
    """Execute `stmt` (built once) with `params` in `conn`'s transaction: on the driver's cursor
    when the compiled statement allows it, else through `conn.execute` (same result calls)."""
    dialect = conn.dialect
    if dialect.name != "postgresql":
        return conn.execute(stmt, params)
    found = plan(stmt, dialect, params)
    if found is None:
        return conn.execute(stmt, params)
    values = found.bind(params)
    cursor = reused_cursor(conn.connection)
    sql = found.sql
    if conn._has_events or conn.engine._has_events:
        for listener in conn.dispatch.before_cursor_execute:
            sql, values = listener(conn, cursor, sql, values, None, False)
    try:
        cursor.execute(sql, values, prepare=True)
        result = cursor.pgresult
        names = found.column_names(result) if result is not None and result.nfields else []
        rows = cursor.fetchall() if names else []
    except dialect.loaded_dbapi.Error as exc:
        conn._handle_dbapi_exception(exc, sql, values, cursor, None)
    return DriverResult(names, rows, cursor.rowcount)


def reused_cursor(pooled):
    """The cursor kept in a pooled connection's info, for as long as its driver connection lives:
    a cursor keeps the dumpers it found for each parameter's type, a new one looks them all up again."""
    driver = pooled.driver_connection
    cursor = pooled.info.get(_CURSOR)
    if cursor is None or cursor.closed or cursor.connection is not driver:
        cursor = pooled.info[_CURSOR] = driver.cursor()
    return cursor


def plan(stmt, dialect, params: dict[str, Any]) -> _Plan | None:
    """How `stmt` (built once) runs on the driver with parameters of these names: compiled on first
    use and kept on the statement; None when it needs SQLAlchemy's per-execution work."""
    owned = stmt.__dict__.get(_PLANS)
    if owned is None or owned[0] is not stmt:  # a generative copy (`.with_for_update()`, `.where()`)
        owned = stmt.__dict__[_PLANS] = (stmt, {})  # inherits its original's __dict__: not its plans
    plans = owned[1]
    key = (dialect.name, tuple(sorted(params)))
    if key not in plans:
        plans[key] = _compile(stmt, dialect, params)
    return plans[key]


def _compile(stmt, dialect, params: dict[str, Any]) -> _Plan | None:
    """The statement compiled for these parameter names, or None when it needs SQLAlchemy's
    per-execution work (then `Connection.execute` runs it)."""
    compiled = stmt.compile(dialect=dialect, column_keys=sorted(params))
    sql = compiled.string
    if (compiled.positional or compiled.escaped_bind_names or "POSTCOMPILE" in sql
            or getattr(compiled, "literal_execute_params", None) or getattr(compiled, "post_compile_params", None)):
        return None
    names = {bind.key: name for bind, name in compiled.bind_names.items()}
    if any(names.get(key) != key for key in params):
        return None
    processors = []
    for bind, name in compiled.bind_names.items():
        process = bind.type.dialect_impl(dialect).bind_processor(dialect)
        if process is not None:
            processors.append((name, process))
    for column in getattr(compiled, "_result_columns", ()):
        if column[3].dialect_impl(dialect).result_processor(dialect, None) is not None:
            return None
    defaults = {name: value for name, value in compiled.construct_params(_check=False).items() if name not in params}
    for name, process in processors:  # the statement's own values, processed once
        if name in defaults:
            defaults[name] = process(defaults[name])
    return _Plan(sql=sql, defaults=defaults,
                 processors=tuple((name, process) for name, process in processors if name not in defaults))
