"""worker/infra/driver_sql.py on PostgreSQL: a statement built once runs on the driver's cursor and
behaves as `Connection.execute` would (rows, errors, a lost connection, listeners)."""

from __future__ import annotations

import pytest
from sqlalchemy import bindparam, event, select, text
from sqlalchemy.exc import DataError, OperationalError

from worker.infra.db import DatabaseUnavailable
from worker.pure.sql_terms import one_of
from worker.infra.driver_sql import DriverResult, plan, run
from worker.pure.clock import utcnow


@pytest.fixture
def db(make_runtime):
    return make_runtime(db="postgres").db


def _customer(db, customer_id: str, email: str, deleted: bool = False) -> None:
    with db.transaction() as conn:
        db.insert(conn, db.table("customers"), {"id": customer_id, "email": email, "metadata": "{}",
                                                 "deleted": deleted, "updated_at": utcnow()})


def test_rows_are_those_connection_execute_returns(db):
    _customer(db, "cus_a", "a@example.com")
    _customer(db, "cus_b", "b@example.com", deleted=True)
    customers = db.table("customers")
    stmt = select(customers).where(one_of(customers.c.id, ("cus_a", "cus_b"))).order_by(customers.c.id)
    with db.transaction() as conn:
        driven = run(conn, stmt, {})
        assert isinstance(driven, DriverResult)  # the driver path ran, not a fallback
        expected = [dict(row) for row in conn.execute(stmt).mappings()]
        assert driven.mappings().all() == expected
        assert [row["deleted"] for row in expected] == [False, True]
        one = select(customers.c.email).where(customers.c.id == bindparam("b_id"))
        assert run(conn, one, {"b_id": "cus_b"}).scalar() == "b@example.com"
        assert run(conn, one, {"b_id": "cus_none"}).first() is None


def test_a_copy_of_a_statement_that_ran_gets_its_own_plan(db):
    """SQLAlchemy's generative methods copy a statement's __dict__, where its plan is kept: the
    copy (here locked FOR UPDATE) must run its own SQL, not the original's."""
    _customer(db, "cus_a", "a@example.com")
    customers = db.table("customers")
    plain = select(customers.c.email).where(customers.c.id == bindparam("b_id"))
    sent: list[str] = []
    event.listen(db.engine, "before_cursor_execute", lambda conn, cursor, sql, *rest: sent.append(sql))
    with db.transaction() as conn:
        assert run(conn, plain, {"b_id": "cus_a"}).scalar() == "a@example.com"
        assert run(conn, plain.with_for_update(), {"b_id": "cus_a"}).scalar() == "a@example.com"
        assert run(conn, plain, {"b_id": "cus_a"}).scalar() == "a@example.com"
    assert ["FOR UPDATE" in sql for sql in sent[-3:]] == [False, True, False]


def test_a_statement_built_once_is_locked_once(db):
    """Database.lock keeps the FOR UPDATE form with its statement (so its compiled plan is kept
    too); a copy of the statement is locked on its own."""
    customers = db.table("customers")
    plain = select(customers.c.email).where(customers.c.id == bindparam("b_id"))
    locked = db.lock(plain)
    assert db.lock(plain) is locked and "FOR UPDATE" in str(locked.compile(db.engine))
    narrower = plain.where(customers.c.deleted.is_(False))
    assert db.lock(narrower) is not locked and "deleted" in str(db.lock(narrower).compile(db.engine))


def test_updates_count_their_rows_and_booleans_are_checked_as_sqlalchemy_checks_them(db):
    _customer(db, "cus_a", "a@example.com")
    customers = db.table("customers")
    with db.transaction() as conn:
        assert db.update_by(conn, customers, {"deleted": True}, id="cus_a").rowcount == 1
        assert db.update_by(conn, customers, {"deleted": True}, id="cus_none").rowcount == 0
        with pytest.raises(TypeError):  # Boolean's strict check, as on Connection.execute
            db.update_by(conn, customers, {"deleted": "yes"}, id="cus_a")


def test_a_driver_error_is_raised_as_sqlalchemy_raises_it_and_rolls_back(db):
    events = db.table("events")
    with pytest.raises(DataError):
        with db.transaction() as conn:
            db.insert(conn, db.table("customers"), {"id": "cus_rolled_back", "metadata": "{}", "updated_at": utcnow()})
            db.insert(conn, events, {"id": "evt_x", "type": "invoice.paid", "created": "not a number",
                                     "payload": "{}", "received_at": utcnow()})
    with db.transaction() as conn:
        assert conn.execute(text("SELECT count(*) FROM customers WHERE id = 'cus_rolled_back'")).scalar() == 0


def test_a_lost_connection_is_invalidated_and_the_next_transaction_reconnects(db):
    customers = db.table("customers")
    stmt = select(customers.c.id).where(customers.c.id == bindparam("b_id"))
    with pytest.raises((OperationalError, DatabaseUnavailable)) as caught:
        with db.transaction() as conn:
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
            with db.engine.connect() as other:
                other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
                other.commit()
            run(conn, stmt, {"b_id": "cus_a"})
    assert "terminat" in str(caught.value).lower() or "connection" in str(caught.value).lower()
    with db.transaction() as conn:  # the pool gave a new connection
        assert run(conn, stmt, {"b_id": "cus_a"}).first() is None


def test_listeners_see_the_statements_run_on_the_driver(db):
    seen = []

    def on_execute(conn, cursor, statement, parameters, context, executemany):
        seen.append((statement, dict(parameters)))

    customers = db.table("customers")
    stmt = select(customers.c.id).where(customers.c.id == bindparam("b_id"))
    event.listen(db.engine, "before_cursor_execute", on_execute)
    try:
        with db.transaction() as conn:
            run(conn, stmt, {"b_id": "cus_seen"})
    finally:
        event.remove(db.engine, "before_cursor_execute", on_execute)
    assert any("FROM customers" in sql and params.get("b_id") == "cus_seen" for sql, params in seen)


def test_a_statement_that_needs_sqlalchemys_work_still_runs(db):
    _customer(db, "cus_a", "a@example.com")
    customers = db.table("customers")
    expanding = select(customers.c.id).where(customers.c.id.in_(bindparam("b_ids", expanding=True)))
    with db.transaction() as conn:
        result = run(conn, expanding, {"b_ids": ["cus_a", "cus_none"]})
        assert not isinstance(result, DriverResult)  # Connection.execute ran it
        assert [row[0] for row in result] == ["cus_a"]


def test_a_results_column_names_are_read_once_and_again_when_its_shape_changes(db):
    """The names of a statement's result columns are kept with its plan (psycopg's description
    builds a Column, type lookups included, for every column of every result); a result with
    another number of columns, a `SELECT *` after a column was added, is named anew."""
    with db.transaction() as conn:
        conn.execute(text("CREATE TABLE shape_probe (id text PRIMARY KEY, a text)"))
        conn.execute(text("INSERT INTO shape_probe VALUES ('x', 'one'), ('y', 'uno')"))
    star = text("SELECT * FROM shape_probe WHERE id = :b_id")
    with db.transaction() as conn:
        first = run(conn, star, {"b_id": "x"})
        assert isinstance(first, DriverResult)  # the driver path ran, not a fallback
        assert first.mappings().all() == [{"id": "x", "a": "one"}]
        assert run(conn, star, {"b_id": "y"}).mappings().all() == [{"id": "y", "a": "uno"}]
        assert run(conn, star, {"b_id": "none"}).mappings().all() == []
    with db.transaction() as conn:
        conn.execute(text("ALTER TABLE shape_probe ADD COLUMN b text DEFAULT 'two'"))
    with db.transaction() as conn:
        assert run(conn, star, {"b_id": "x"}).mappings().all() == [{"id": "x", "a": "one", "b": "two"}]
        no_rows = run(conn, text("UPDATE shape_probe SET a = 'eins' WHERE id = :b_id"), {"b_id": "x"})
        assert (no_rows.all(), no_rows.rowcount) == ([], 1)


def test_a_statement_is_prepared_on_the_server_at_its_first_run(db):
    """The SQL of a statement built once never changes: PostgreSQL keeps its plan from the first
    run on a connection (psycopg's default waits for the sixth, parsing and planning each before)."""
    _customer(db, "cus_a", "a@example.com")
    customers = db.table("customers")
    stmt = select(customers.c.email).where(customers.c.id == bindparam("b_id"))
    prepared = text("SELECT count(*) FROM pg_prepared_statements WHERE statement = :sql")
    with db.transaction() as conn:
        assert run(conn, stmt, {"b_id": "cus_a"}).scalar() == "a@example.com"
        sql = plan(stmt, conn.dialect, {"b_id": "cus_a"}).sql.replace("%(b_id)s", "$1")  # as the server holds it
        assert conn.execute(prepared, {"sql": sql}).scalar() == 1
        assert run(conn, stmt, {"b_id": "cus_a"}).scalar() == "a@example.com"  # runs the prepared one
        assert conn.execute(prepared, {"sql": sql}).scalar() == 1
