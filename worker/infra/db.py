"""The database: engine made on first use, schema from schema.sql, transactions that serialize.

PostgreSQL serializes per row (SELECT ... FOR UPDATE); SQLite has one writer, so every
transaction starts with BEGIN IMMEDIATE: the write lock is taken up front and a busy
timeout waits for it, instead of failing late on a lock upgrade.
"""

from __future__ import annotations

import functools
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from sqlalchemy import Connection, Engine, MetaData, Table, bindparam, create_engine, event, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import CompileError, DBAPIError, OperationalError
from sqlalchemy.sql import ClauseElement
from sqlalchemy.pool import NullPool

from config.settings import PROJECT_ROOT

from worker.infra import advisory_locks
from worker.infra.driver_sql import plan, reused_cursor, run
from worker.pure.json_text import dumps, loads  # noqa: F401  (TEXT columns; long imported from here)

SCHEMA_PATH = PROJECT_ROOT / "schema.sql"


class DatabaseUnavailable(Exception):
    """Raised when the database cannot be reached (the webhook answers 503, Stripe retries)."""


def schema_statements(path: Path = SCHEMA_PATH) -> list[str]:
    """The statements of schema.sql, comments removed, split on ';'."""
    sql = re.sub(r"--[^\n]*", "", path.read_text())
    return [s.strip() for s in sql.split(";") if s.strip()]


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_conn, _record):  # pragma: no cover - exercised by every sqlite test
        dbapi_conn.isolation_level = None  # let us issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        # Erased and pruned values must not survive in free pages or freed cell space (issue 19).
        cur.execute("PRAGMA secure_delete=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def on_begin(conn):  # pragma: no cover
        conn.exec_driver_sql("BEGIN IMMEDIATE")


class Database:
    """Engine, reflected tables and transaction helpers for one DATABASE_URL."""

    def __init__(self, url: str, *, pool_size: int = 10, max_overflow: int = 20, echo: bool = False):
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            path = url.split("///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.engine = create_engine(url, echo=echo, poolclass=NullPool, hide_parameters=True,
                                        connect_args={"timeout": 30, "check_same_thread": False})
            _sqlite_setup(self.engine)
        else:
            # No pre-ping (it was a quarter of the webhook's time): a connection that died
            # fails one transaction (webhook 503, Stripe retries; actor retries) and
            # SQLAlchemy then refreshes the whole pool.
            # hide_parameters: errors kept in events.last_error never carry payload values (emails).
            # pool_size + max_overflow: DATABASE_POOL_SIZE / DATABASE_MAX_OVERFLOW, per process.
            self.engine = create_engine(url, echo=echo, pool_size=pool_size, max_overflow=max_overflow,
                                        pool_recycle=1800, hide_parameters=True, connect_args={"connect_timeout": 5})
        self._tables: dict[str, Table] | None = None
        self._dialect = sqlite if self.is_sqlite else postgresql  # its insert() has ON CONFLICT
        self._statements: dict[tuple, tuple[Table, Any]] = {}  # _built_once
        self.inserts_on_driver = True  # insert_new_committed runs on the driver connection (PostgreSQL)

    # -- schema ---------------------------------------------------------------------------
    def init_schema(self) -> None:
        """Apply schema.sql and the metric-counting triggers; idempotent (IF NOT EXISTS)."""
        with self.transaction() as conn:
            if not self.is_sqlite:
                # Two `db init` at once must not race on CREATE TABLE IF NOT EXISTS.
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": advisory_locks.MIGRATION})
            for statement in schema_statements():
                conn.exec_driver_sql(statement)
            from worker.observe.metric_counts import install_triggers
            install_triggers(conn)  # triggers are per database kind: made from Python, not schema.sql
        self._tables = None

    @property
    def tables(self) -> dict[str, Table]:
        """Tables reflected from the live schema (schema.sql is the only definition)."""
        if self._tables is None:
            metadata = MetaData()
            try:
                with self.reading() as conn:
                    metadata.reflect(conn)
            except (OperationalError, DBAPIError) as exc:
                raise DatabaseUnavailable(str(exc).splitlines()[0]) from exc
            self._tables = dict(metadata.tables)
        return self._tables

    def table(self, name: str) -> Table:
        return self.tables[name]

    # -- transactions ---------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One transaction; commits on success, rolls back on error."""
        if self.is_sqlite and self._tables is None:
            self.tables  # reflect first: reflecting inside BEGIN IMMEDIATE would wait on our own lock
        with _unavailable_when_lost(), self.engine.begin() as conn:
            yield conn

    @contextmanager
    def autocommit(self) -> Iterator[Connection]:
        """A connection whose every statement commits on its own: one round trip for a single
        INSERT (the webhook's hot path) instead of BEGIN, INSERT, COMMIT. SQLite keeps its
        ordinary transaction (BEGIN IMMEDIATE serializes writers there)."""
        if self.is_sqlite:
            with self.transaction() as conn:
                yield conn
            return
        with _unavailable_when_lost(), self.autocommit_connection() as conn:
            yield conn

    @contextmanager
    def reading(self, *, snapshot: bool = False) -> Iterator[Connection]:
        """A connection to read with that leaves no transaction for the pool to roll back.

        psycopg answers any ROLLBACK by discarding every statement prepared on the connection, and
        the pool ends a plain `engine.connect()` read with one: one read per event or step kept
        the hot path's statements from ever staying prepared, so PostgreSQL parsed and planned
        about half of them anew (issue 17). Here each statement is its own snapshot (autocommit:
        one round trip, nothing to end); `snapshot=True` reads in one transaction ended by
        COMMIT, also when the block raises an error of its own (a 404), as it wrote nothing; after
        a database error the pool rolls back. SQLite: a plain connection, as before (its BEGIN
        would take the write lock).
        """
        if self.is_sqlite:
            with self.engine.connect() as conn:
                yield conn
        elif snapshot:
            with self.engine.connect() as conn:
                try:
                    yield conn
                except DBAPIError:
                    raise
                except BaseException:
                    if conn.in_transaction() and not conn.invalidated:
                        conn.commit()
                    raise
                conn.commit()
        else:
            with self.autocommit_connection() as conn:
                yield conn

    def autocommit_connection(self) -> Connection:
        """A pooled connection in autocommit: each statement commits on its own and nothing is left
        for the pool to roll back (the advisory locks hold theirs for a whole session)."""
        return self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")

    def ping(self) -> None:
        try:
            with self.reading() as conn:
                conn.execute(text("SELECT 1"))
        except (OperationalError, DBAPIError) as exc:
            raise DatabaseUnavailable(str(exc).splitlines()[0]) from exc

    def insert_ignore(self, table: Table, values: dict[str, Any] | list[dict[str, Any]], *keys: str):
        """INSERT ... ON CONFLICT DO NOTHING for this dialect (both support it)."""
        stmt = self._dialect.insert(table).values(values)
        return stmt.on_conflict_do_nothing(index_elements=list(keys) or None)

    def insert_new(self, conn: Connection, table: Table, values: dict[str, Any], *keys: str) -> bool:
        """Insert the row unless one with the same key exists; True when this call inserted it.

        (rowcount is unreliable for ON CONFLICT DO NOTHING on psycopg 3: RETURNING tells.)
        The statement is built once per table and key, and the row is passed as its parameters:
        building `.values(row)` anew cost more CPU than the round trip (a bind and a cache-key
        walk per column, every call); SQLAlchemy compiles the cached statement once per set of
        column names. Values that are SQL expressions are inlined as before.
        """
        if _has_expression(values):
            pk = [c for c in table.primary_key.columns][0]
            return conn.execute(self.insert_ignore(table, values, *keys).returning(pk)).first() is not None
        return run(conn, self._insert_new_statement(table, keys), self._known_columns(table, values)
                   ).first() is not None

    def insert_new_row(self, conn: Connection, table: Table, values: dict[str, Any], *keys: str):
        """`insert_new` RETURNING the whole row as stored (defaults included): the row, or None when
        one with the same key existed. Built once per table and key, like insert_new's."""
        def build(table: Table):
            return (self._dialect.insert(table).on_conflict_do_nothing(index_elements=list(keys) or None)
                    .returning(*table.c))
        stmt = self._built_once(table, ("insert_new_row", keys), build)
        return run(conn, stmt, self._known_columns(table, values)).mappings().first()

    def insert(self, conn: Connection, table: Table, values: dict[str, Any]) -> None:
        """A plain INSERT of one row, its statement built once per table (the row is its parameters)."""
        run(conn, self._built_once(table, ("insert",), lambda table: table.insert()),
            self._known_columns(table, values))

    def update_by(self, conn: Connection, table: Table, values: dict[str, Any], *, returning: bool = False,
                  **equal: Any):
        """UPDATE table SET values WHERE each `equal` column = its value; the result (its rows when
        `returning`: the whole row as updated). The statement is built once per table, WHERE columns
        and RETURNING; the SET columns are the parameters' (SQLAlchemy compiles each set once).
        Values that are SQL expressions build the statement anew, as `.values()` would."""
        if _has_expression(values):
            stmt = update(table).where(*(table.c[name] == value for name, value in equal.items())).values(**values)
            return conn.execute(stmt.returning(*table.c) if returning else stmt)

        def build(table: Table):
            stmt = update(table).where(*(table.c[name] == bindparam(f"w_{name}") for name in equal))
            return stmt.returning(*table.c) if returning else stmt
        stmt = self._built_once(table, ("update_by", tuple(equal), returning), build)
        params = dict(self._known_columns(table, values))
        params.update((f"w_{name}", value) for name, value in equal.items())
        return run(conn, stmt, params)

    def row_by(self, conn: Connection, table: Table, **equal: Any) -> dict[str, Any] | None:
        """The row WHERE each `equal` column = its value (the first, when several match), as a dict;
        None when there is none. The SELECT is built once per table and WHERE columns."""
        def build(table: Table):
            return select(table).where(*(table.c[name] == bindparam(f"w_{name}") for name in equal))
        stmt = self._built_once(table, ("row_by", tuple(equal)), build)
        row = run(conn, stmt, {f"w_{name}": value for name, value in equal.items()}).mappings().first()
        return dict(row) if row is not None else None

    def _insert_new_statement(self, table: Table, keys: tuple[str, ...]):
        """`insert_new`'s INSERT ... ON CONFLICT DO NOTHING RETURNING the key, built once per table and key."""
        def build(table: Table):
            pk = [c for c in table.primary_key.columns][0]
            return self._dialect.insert(table).on_conflict_do_nothing(index_elements=list(keys) or None).returning(pk)
        return self._built_once(table, ("insert_new", keys), build)

    def _built_once(self, table: Table, name: tuple, build):
        """The statement `build(table)` made for `table` under `name`, built on first use: building
        one anew every call (a bind, a coercion and a cache-key walk per column) cost more CPU than
        its round trip. A table reflected again is another object, so its statements are rebuilt."""
        cached = self._statements.get((table.name, name))
        if cached is None or cached[0] is not table:
            cached = self._statements[(table.name, name)] = (table, build(table))
        return cached[1]

    @staticmethod
    def _known_columns(table: Table, values: dict[str, Any]) -> dict[str, Any]:
        """`values`, refused as `.values(row)` would refuse them when a key is not a column of the
        table: passed as parameters of a statement built once, an unknown key is dropped silently."""
        unknown = values.keys() - _column_names(table)
        if unknown:
            raise CompileError(f"Unconsumed column names: {', '.join(sorted(unknown))}")
        return values

    def insert_new_committed(self, table: Table, values: dict[str, Any], *keys: str) -> bool:
        """`insert_new` as one statement committed on its own, before this returns (the webhook's
        hot path: the event is durable before the 2xx). True when this call inserted the row.

        On PostgreSQL `insert_new`'s statement runs as worker.infra.driver_sql plans it, on the
        pooled driver connection in autocommit: one round trip, and none of the Connection's
        per-call work (execution options, isolation level set and reset, result wrapping), which
        cost about as much CPU as the driver's own execute. Errors are handled as a Connection
        would: a lost connection invalidates the pool (as SQLAlchemy does on a disconnect) and
        raises DatabaseUnavailable. SQLite keeps its ordinary transaction (BEGIN IMMEDIATE), and
        `inserts_on_driver = False` takes the Connection path too (the benchmark's trace sees it).
        """
        found = None
        if self.inserts_on_driver and not self.is_sqlite and \
                not _has_expression(values):
            found = plan(self._insert_new_statement(table, keys), self.engine.dialect,
                         self._known_columns(table, values))
        if found is None:
            with self.autocommit() as conn:
                return self.insert_new(conn, table, values, *keys)
        params = found.bind(values)
        dbapi_error = self.engine.dialect.loaded_dbapi.Error
        try:
            pooled = self.engine.raw_connection()
        except (DBAPIError, dbapi_error) as exc:  # the pool could not connect
            raise DatabaseUnavailable(_first_line(exc)) from exc
        try:
            driver = pooled.driver_connection
            cursor = reused_cursor(pooled)
            driver.autocommit = True
            try:
                return cursor.execute(found.sql, params, prepare=True).fetchone() is not None  # as driver_sql.run
            finally:
                if not driver.closed:
                    driver.autocommit = False
        except dbapi_error as exc:
            if self.engine.dialect.is_disconnect(exc, pooled.dbapi_connection, None) or _is_connection_error(exc):
                self.engine.pool._invalidate(pooled, exc)  # every connection of its generation, as a Connection does
                raise DatabaseUnavailable(_first_line(exc)) from exc
            raise
        finally:
            pooled.close()

    def insert_or_lock(self, conn: Connection, table: Table, values: dict[str, Any], key: str, untouched: str):
        """INSERT ... ON CONFLICT (key) DO UPDATE SET untouched = untouched RETURNING the row: the
        row inserted, or the stored one locked (PostgreSQL) and unchanged, in one statement instead
        of an INSERT ... DO NOTHING then a SELECT ... FOR UPDATE. Returns that row (a mapping)."""
        def build(table: Table):
            return (self._dialect.insert(table)
                    .on_conflict_do_update(index_elements=[key], set_={untouched: table.c[untouched]})
                    .returning(*table.c))
        stmt = self._built_once(table, ("insert_or_lock", key, untouched), build)
        return run(conn, stmt, self._known_columns(table, values)).mappings().first()

    def run(self, conn: Connection, stmt, params: dict[str, Any]):
        """A statement built once, run with `params` (worker/infra/driver_sql.py: on the driver's
        cursor where it can, else `conn.execute`)."""
        return run(conn, stmt, params)

    def lock(self, stmt):
        """SELECT ... FOR UPDATE on PostgreSQL; SQLite already holds the write lock (BEGIN IMMEDIATE).

        The locked form is kept with `stmt`, so a statement built once is locked once too, and
        keeps the compiled plan driver_sql attaches to it (a copy made per call would be compiled
        again every time). Checked by owner, as driver_sql's plans are: a generative copy of
        `stmt` inherits its __dict__, not its locked form."""
        if self.is_sqlite:
            return stmt
        owned = stmt.__dict__.get(_LOCKED)
        if owned is None or owned[0] is not stmt:
            owned = stmt.__dict__[_LOCKED] = (stmt, stmt.with_for_update())
        return owned[1]

    def dispose(self) -> None:
        self.engine.dispose()


_LOCKED = "_dunning_locked"  # on a statement: (itself, its SELECT ... FOR UPDATE), Database.lock


def _has_expression(values: dict[str, Any]) -> bool:
    """Whether a value is an SQL expression (`version + 1`): such a statement is built anew."""
    for value in values.values():
        if isinstance(value, ClauseElement):
            return True
    return False


@functools.lru_cache(maxsize=256)
def _column_names(table: Table) -> frozenset[str]:
    return frozenset(table.c.keys())


@contextmanager
def _unavailable_when_lost() -> Iterator[None]:
    """A lost or refused connection raised as DatabaseUnavailable (callers answer 503 or retry)."""
    try:
        yield
    except OperationalError as exc:
        if _is_connection_error(exc):
            raise DatabaseUnavailable(_first_line(exc)) from exc
        raise


def _first_line(exc: Exception) -> str:
    """The driver's first line of `exc` (SQLAlchemy's wrapper or the driver's own error)."""
    text = str(getattr(exc, "orig", None) or exc)
    return text.splitlines()[0] if text.strip() else repr(exc)


def _is_connection_error(exc: Exception) -> bool:
    """Whether `exc` (SQLAlchemy's OperationalError, or the driver's own error) means the
    database cannot be reached, rather than that the statement failed."""
    message = str(getattr(exc, "orig", None) or exc).lower()
    if "database is locked" in message:
        return False
    return getattr(exc, "connection_invalidated", False) or any(
        marker in message for marker in (
            "connection", "could not connect", "server closed", "terminating", "unable to open",
            "the database system is", "timeout expired", "no such host",
        )
    )


def about_case(table: Table, invoice_id: str, case_id: str | None):
    """WHERE clause for a case's rows of an outbox-like table (emails, platform notices): those
    naming its invoice, or its case when there is one (account-level rows carry only the case),
    and the account emails that covered one of its steps (email_steps, issue 14)."""
    from sqlalchemy import or_
    clause = table.c.invoice_id == invoice_id
    if not case_id:
        return clause
    clauses = [clause, table.c.case_id == case_id]
    steps = table.metadata.tables.get("email_steps") if table.name == "emails" else None
    if steps is not None:
        clauses.append(table.c.id.in_(select(steps.c.email_id).where(steps.c.case_id == case_id)))
    return or_(*clauses)
