"""The webhook receiver: verify, store once, enqueue once; bad input stores nothing."""

from __future__ import annotations

import json
import time

import falcon.testing
import pytest

from tests.support.helpers import WEBHOOK_SECRET, drain, make_event, post_event, rows, signed_headers
from worker.web.app import create_app


def failed_invoice_event(event_id="evt_test_1", invoice_id="in_test_1", created=None) -> dict:
    created = created or int(time.time())
    invoice = {"id": invoice_id, "object": "invoice", "customer": "cus_test_1", "status": "open",
               "currency": "usd", "amount_due": 2500, "amount_remaining": 2500, "attempt_count": 1,
               "customer_email": "owner@example.com", "number": "INV-0001",
               "next_payment_attempt": created + 3 * 86400}
    return make_event("invoice.payment_failed", invoice, event_id=event_id, created=created)


def test_a_signed_event_posted_twice_is_stored_once_and_enqueued_once(any_runtime):
    client = falcon.testing.TestClient(create_app(any_runtime))
    event = failed_invoice_event()
    first, second = post_event(client, event), post_event(client, event)
    assert first.status_code == 200 and second.status_code == 200
    assert first.json["duplicate"] is False and second.json["duplicate"] is True
    assert len(rows(any_runtime, "events")) == 1
    assert any_runtime.broker.queues["events"].qsize() == 1
    drain(any_runtime)
    assert rows(any_runtime, "events")[0]["status"] == "processed"


@pytest.mark.parametrize("headers, expected", [
    ({}, 400),
    ({"Stripe-Signature": "t=1,v1=deadbeef"}, 400),
    ({"Stripe-Signature": "garbage"}, 400),
])
def test_missing_or_forged_signatures_are_refused_and_store_nothing(runtime, client, headers, expected):
    body = json.dumps(failed_invoice_event())
    assert client.simulate_post("/webhooks/stripe", body=body, headers=headers).status_code == expected
    assert rows(runtime, "events") == []


def test_a_stale_signature_is_refused(runtime, client):
    body = json.dumps(failed_invoice_event())
    resp = client.simulate_post("/webhooks/stripe", body=body,
                                headers=signed_headers(body, timestamp=int(time.time()) - 400))
    assert resp.status_code == 400 and "tolerance" in resp.json["error"]
    assert rows(runtime, "events") == []


def test_a_signature_by_another_secret_is_refused(runtime, client):
    resp = post_event(client, failed_invoice_event(), secret="whsec_someone_else")
    assert resp.status_code == 400
    assert rows(runtime, "events") == []


def test_a_body_over_one_mebibyte_is_refused_with_413(runtime, client):
    body = '{"pad": "' + "x" * (2 * 1024 * 1024) + '"}'
    resp = client.simulate_post("/webhooks/stripe", body=body, headers=signed_headers(body))
    assert resp.status_code == 413
    assert rows(runtime, "events") == []


def test_a_body_that_is_not_json_is_refused(runtime, client):
    body = "this is not json"
    assert client.simulate_post("/webhooks/stripe", body=body, headers=signed_headers(body)).status_code == 400
    assert rows(runtime, "events") == []


def test_an_unknown_event_type_is_stored_as_ignored_and_not_enqueued(runtime, client):
    event = make_event("balance.available", {"object": "balance"}, event_id="evt_bal", created=int(time.time()))
    resp = post_event(client, event)
    assert resp.status_code == 200 and resp.json["ignored"] is True
    assert [r["status"] for r in rows(runtime, "events")] == ["ignored"]
    assert runtime.broker.queues.get("events") is None or runtime.broker.queues["events"].qsize() == 0


def test_a_rotated_secret_list_accepts_both_secrets(make_runtime):
    rt = make_runtime(STRIPE_WEBHOOK_SECRET=f"whsec_new_one_rotated_in_test, {WEBHOOK_SECRET}")
    client = falcon.testing.TestClient(create_app(rt))
    assert post_event(client, failed_invoice_event("evt_a"), secret="whsec_new_one_rotated_in_test").status_code == 200
    assert post_event(client, failed_invoice_event("evt_b"), secret=WEBHOOK_SECRET).status_code == 200


def test_health_and_readiness(client):
    assert client.simulate_get("/healthz").json == {"status": "ok"}
    ready = client.simulate_get("/readyz")
    assert ready.status_code == 200 and ready.json["checks"]["database"] == "ok"



def test_a_lost_database_connection_is_unavailable_once_then_the_pool_is_renewed(make_runtime):
    """The webhook's INSERT runs on the pooled driver connection (Database.insert_new_committed):
    a connection the server dropped raises DatabaseUnavailable (the webhook's 503, Stripe retries),
    and the pool is renewed as SQLAlchemy renews it, so the next delivery is stored."""
    from sqlalchemy import event, text

    from worker.infra.db import Database, DatabaseUnavailable
    from worker.intake.event_store import parse_envelope, store_event
    runtime = make_runtime(db="postgres")
    db = Database(runtime.settings.database_url)  # a pool no other thread of the test process uses
    envelope = {e: parse_envelope(json.dumps(failed_invoice_event(e, invoice_id="in_" + e))) for e in ("evt_1", "evt_2")}
    seen: list[str] = []  # what ran through SQLAlchemy's Connections
    event.listen(db.engine, "before_cursor_execute", lambda conn, cursor, sql, *rest: seen.append(sql))
    try:
        assert store_event(db, envelope["evt_1"], known_type=True) is True
        assert not any("INSERT INTO events" in sql for sql in seen)  # it ran on the driver connection
        held = [db.engine.raw_connection() for _ in range(3)]
        for pooled in held:
            pooled.close()  # three idle connections: all of them die below, one failure renews all
        with runtime.db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = current_database() AND pid <> pg_backend_pid()"))
        with pytest.raises(DatabaseUnavailable):
            store_event(db, envelope["evt_2"], known_type=True)
        assert store_event(db, envelope["evt_2"], known_type=True) is True
        assert store_event(db, envelope["evt_2"], known_type=True) is False  # a duplicate: stored once
    finally:
        db.dispose()
    assert sorted(r["id"] for r in rows(runtime, "events")) == ["evt_1", "evt_2"]


def test_a_database_that_stopped_answering_after_start_is_unavailable(make_runtime):
    """The schema was reflected at boot; then no connection can be made: DatabaseUnavailable (503)."""
    from worker.infra.db import Database, DatabaseUnavailable
    from worker.intake.event_store import parse_envelope, store_event
    runtime = make_runtime(db="postgres")
    gone = Database("postgresql+psycopg://postgres@127.0.0.1:1/nothing")
    gone._tables = runtime.db.tables  # reflected before the outage
    try:
        with pytest.raises(DatabaseUnavailable):
            store_event(gone, parse_envelope(json.dumps(failed_invoice_event())), known_type=True)
    finally:
        gone.dispose()


@pytest.mark.parametrize("db", ["sqlite", "postgres"])
def test_insert_new_refuses_a_column_the_table_does_not_have(make_runtime, db):
    """insert_new passes the row as parameters of a statement built once; a misspelt column must
    still fail loudly (as .values(row) did), not be dropped from the INSERT."""
    from sqlalchemy.exc import CompileError
    runtime = make_runtime(db=db)
    cursors = runtime.db.table("cursors")
    row = {"name": "n", "value": "", "updated_at": None, "vaule": "typo"}
    with pytest.raises(CompileError, match="vaule"):
        runtime.db.insert_new_committed(cursors, row, "name")
    with pytest.raises(CompileError, match="vaule"), runtime.db.transaction() as conn:
        runtime.db.insert_new(conn, cursors, row, "name")
