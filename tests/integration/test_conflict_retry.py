"""An event whose transaction PostgreSQL rolls back as a deadlock's victim is processed on its next
try, in the same message (worker/intake/processing.py): not left `failed` for the broker's retry,
which a broker outage can lose."""

from __future__ import annotations

import json
import threading

from sqlalchemy import text

from tests.support.helpers import make_event, rows, wait_until


def _customer(customer_id: str, email: str) -> dict:
    return {"id": customer_id, "object": "customer", "email": email, "name": "Owner", "metadata": {},
            "invoice_settings": {"default_payment_method": None}}


def _store(runtime, evt: dict):
    from worker.intake.event_store import parse_envelope, store_event
    envelope = parse_envelope(json.dumps(evt))
    store_event(runtime.db, envelope, known_type=True)
    return envelope


def _waiting_on_a_lock(runtime) -> bool:
    with runtime.db.engine.connect() as conn:
        return conn.execute(text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND query LIKE 'UPDATE customers%'")).scalar() > 0


def test_a_deadlock_victim_is_processed_on_its_next_try(make_runtime, capfd):
    from worker.intake.event_store import message_args
    runtime = make_runtime(db="postgres")
    created = _store(runtime, make_event("customer.created", _customer("cus_dl", "old@example.com"),
                                         event_id="evt_dl_created", created=1))
    runtime.actors.process_event.fn(*message_args(created))
    updated = _store(runtime, make_event("customer.updated", _customer("cus_dl", "new@example.com"),
                                         event_id="evt_dl_updated", created=2))

    other = runtime.db.engine.connect()
    other_tx = other.begin()
    other.execute(text("SELECT id FROM customers WHERE id = 'cus_dl' FOR SHARE"))  # as another event holds it
    raised: list = []

    def process():
        try:
            runtime.actors.process_event.fn(*message_args(updated))
        except Exception as exc:  # noqa: BLE001 - reported below
            raised.append(exc)
    worker = threading.Thread(target=process)
    worker.start()
    try:
        wait_until(lambda: _waiting_on_a_lock(runtime), timeout=20)  # its UPDATE waits for our share lock
        # Our update closes the cycle; the worker, waiting longer, is rolled back as the victim.
        other.execute(text("UPDATE customers SET name = 'Other writer' WHERE id = 'cus_dl'"))
        other_tx.commit()
    finally:
        other.close()
        worker.join(timeout=60)
    assert not raised, raised
    [event] = [e for e in rows(runtime, "events") if e["id"] == "evt_dl_updated"]
    assert event["status"] == "processed" and event["last_error"] is None
    assert rows(runtime, "customers", id="cus_dl")[0]["email"] == "new@example.com"
    assert "event.retrying_conflict" in capfd.readouterr().err
