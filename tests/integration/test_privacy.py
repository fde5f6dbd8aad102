"""Issue 19: keep only what dunning needs, for as long as it needs it: erasure, export, retention.

Every acceptance test runs on SQLite and on PostgreSQL. "A logical dump" is what `pg_dump
--data-only` prints for the test's PostgreSQL database (pg_dump is run), and what SQLite's `.dump`
prints (Python's `sqlite3.Connection.iterdump`, the same SQL text); on SQLite the database file's
raw bytes (free pages included) and its WAL are scanned too.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, select, update

from tests.support.cli import cli_env, invoke
from tests.support.dunning import DAY, T0, deliver, event, invoice, tick
from tests.support.fake_stripe import API_KEY, FakeStripeServer
from tests.support.helpers import admin_client, bearer, drain, make_event, post_event, rows
from worker.cli import main
from worker.pure.clock import utcnow
from worker.privacy.customer_data import ERASED, KEPT, customer_tables, is_stripped, unclassified
from worker.infra.db import schema_statements

EMAIL = "zephyrine.qx19+dunning@orchid-privacy.example"
NAME = "Zéphyrine Ørstedbakken"
PHONE = "+44 7700 918273"
ADDRESS = {"line1": "17 Quillbrook Lane", "line2": None, "city": "Vexholm", "postal_code": "QX9 4ZT",
           "state": None, "country": "GB"}
NOTE = "owner called: post the papers to 17 Quillbrook Lane, Vexholm QX9 4ZT"
FINGERPRINT = "fpQuillVex19"
# What must not survive: whole values and their ASCII parts (JSON escapes the non-ASCII name as
# \u00e9, pg_dump's COPY doubles backslashes: "rstedbakken" is in every form).
NEEDLES = [EMAIL, "orchid-privacy", NAME, "Ørstedbakken", "rstedbakken", PHONE, "918273", "Quillbrook", "Vexholm",
           "QX9 4ZT", FINGERPRINT]
OTHER_EMAIL = "bartholomew.keep@untouched-owner.example"
OTHER_NAME = "Bartholomew Keepsake"


def run(*args, code: int = 0) -> str:
    """`dunning ARGS`: its stdout (logs go to stderr), or its stderr when it fails."""
    result = invoke(*args, code=code)
    return result.stdout if code == 0 else result.stderr


def customer_object(cid: str, email: str, name: str, phone: str | None = PHONE) -> dict:
    return {"id": cid, "object": "customer", "email": email, "name": name, "phone": phone,
            "address": ADDRESS if phone else None, "description": None,
            "shipping": {"name": name, "phone": phone, "address": ADDRESS} if phone else None,
            "metadata": {"phone": phone or "", "platform_app": "app_19"},
            "invoice_settings": {"default_payment_method": None}, "default_source": None}


def failed_invoice(invoice_id: str, cid: str, email: str, name: str, created: int) -> dict:
    inv = invoice(invoice_id, customer=cid, subscription=f"sub_{cid}", email=email, amount=4200,
                  next_payment_attempt=created + 3 * DAY, card=("visa", "4242"))
    inv.update(customer_name=name, customer_phone=PHONE if cid == "cus_priv" else None,
               customer_address=ADDRESS if cid == "cus_priv" else None,
               customer_shipping={"name": name, "address": ADDRESS, "phone": PHONE} if cid == "cus_priv" else None)
    return event("invoice.payment_failed", inv, created)


def card_attached(cid: str, created: int) -> dict:
    pm = {"id": f"pm_{cid}", "object": "payment_method", "type": "card", "customer": cid,
          "billing_details": {"name": NAME, "email": EMAIL, "phone": PHONE, "address": ADDRESS},
          "card": {"brand": "visa", "last4": "4242", "exp_month": 4, "exp_year": 2031, "funding": "credit",
                   "fingerprint": FINGERPRINT}}
    return make_event("payment_method.attached", pm, event_id=f"evt_pm_{cid}_{created}", created=created)


def history(runtime, fake, cid: str = "cus_priv", invoice_id: str = "in_priv", *, recover: bool = True) -> None:
    """A failure, two emails (day 0 and day 3), a payment link with a note holding the address, and
    (with recover) the payment; plus another customer with a case of its own."""
    fake.add_invoice(invoice_id, cid, 4200, "usd", subscription=f"sub_{cid}")
    fake.add_invoice("in_other", "cus_other", 5100, "usd", subscription="sub_cus_other")
    # The owner of record is read again from Stripe (issue 12): the fake knows both customers as the
    # customer.created events below describe them (email and name).
    fake.add_customer(cid, email=EMAIL).update(customer_object(cid, EMAIL, NAME))
    fake.add_customer("cus_other", email=OTHER_EMAIL).update(customer_object("cus_other", OTHER_EMAIL, OTHER_NAME,
                                                                             phone=None))
    assert deliver(runtime, make_event("customer.created", customer_object(cid, EMAIL, NAME),
                                       event_id=f"evt_cc_{cid}", created=T0 - 100)) == "processed"
    assert deliver(runtime, make_event("customer.created", customer_object("cus_other", OTHER_EMAIL, OTHER_NAME,
                                                                           phone=None),
                                       event_id="evt_cc_other", created=T0 - 100)) == "processed"
    assert deliver(runtime, card_attached(cid, T0 - 50)) == "processed"
    assert deliver(runtime, failed_invoice(invoice_id, cid, EMAIL, NAME, T0)) == "processed"
    assert deliver(runtime, failed_invoice("in_other", "cus_other", OTHER_EMAIL, OTHER_NAME, T0 + 10)) == "processed"
    tick(runtime, T0 + 3 * DAY + 60)  # the reminders
    client = admin_client(runtime)
    answer = client.simulate_post("/payment-links", body=json.dumps({"invoice": invoice_id, "note": NOTE}),
                                  headers=bearer())
    assert answer.status_code == 202, answer.text
    drain(runtime)  # the link is made, every email is delivered (.eml files)
    if recover:
        paid = invoice(invoice_id, customer=cid, subscription=f"sub_{cid}", email=EMAIL, status="paid", amount=4200)
        assert deliver(runtime, event("invoice.paid", paid, T0 + 4 * DAY)) == "processed"
        drain(runtime)
    mine = rows(runtime, "emails", customer_id=cid)
    assert {"payment-failed", "reminder", "payment-link"} <= {e["template"] for e in mine}
    assert any(NAME in e["body_text"] for e in mine) and all(e["recipient"] == EMAIL for e in mine)
    assert rows(runtime, "payment_links", invoice_id=invoice_id)[0]["note"] == NOTE


# -- dumps ----------------------------------------------------------------------------------------
def logical_dump(runtime) -> str:
    """pg_dump --data-only (PostgreSQL) or sqlite3 iterdump (SQLite's .dump) of the whole database."""
    url = runtime.settings.database_url
    if runtime.db.is_sqlite:
        conn = sqlite3.connect(url.split("///", 1)[1])
        try:
            return "\n".join(conn.iterdump())
        finally:
            conn.close()
    if shutil.which("pg_dump") is None:
        pytest.skip("pg_dump is not installed")
    plain = url.replace("postgresql+psycopg://", "postgresql://")
    return subprocess.run(["pg_dump", "--data-only", "--no-owner", plain], check=True, capture_output=True,
                          text=True, timeout=120).stdout


def sqlite_file_bytes(runtime) -> bytes:
    path = Path(runtime.settings.database_url.split("///", 1)[1])
    data = path.read_bytes()
    wal = path.with_name(path.name + "-wal")
    return data + (wal.read_bytes() if wal.exists() else b"")


def assert_no_personal_data(runtime) -> None:
    dump = logical_dump(runtime)
    found = [n for n in NEEDLES if n in dump]
    assert not found, f"still in the logical dump: {found}"
    if runtime.db.is_sqlite:
        raw = sqlite_file_bytes(runtime)
        found = [n for n in NEEDLES if n.encode() in raw]
        assert not found, f"still in the SQLite file or its WAL (free pages?): {found}"
    # The other customer is untouched.
    assert OTHER_EMAIL in dump and OTHER_NAME in dump


def settle_sqlite_file(runtime) -> None:
    """SQLite: checkpoint the WAL into the file (as a long-running database has) and check that the
    raw-bytes scan sees the values there, so finding none afterwards means they were overwritten."""
    if runtime.db.is_sqlite:
        from worker.privacy.erasure import flush_sqlite
        flush_sqlite(runtime.db)
        assert EMAIL.encode() in sqlite_file_bytes(runtime)


@pytest.fixture(params=["sqlite", "postgres"])
def priv_runtime(make_runtime, request):
    with FakeStripeServer() as fake:
        runtime = make_runtime(db=request.param, STRIPE_API_KEY=API_KEY, STRIPE_API_BASE=fake.base_url)
        yield runtime, fake


def case_counts():
    return json.loads(run("stats", "--json"))["cases"]


# -- acceptance: customer.deleted -----------------------------------------------------------------
def test_customer_deleted_from_stripe_leaves_none_of_the_customers_values_in_a_logical_dump(priv_runtime):
    runtime, fake = priv_runtime
    history(runtime, fake)
    before = case_counts()
    assert EMAIL in logical_dump(runtime)  # the dump does show them before
    settle_sqlite_file(runtime)

    gone = customer_object("cus_priv", EMAIL, NAME)
    gone["deleted"] = False  # Stripe's customer.deleted carries the whole customer as it was
    assert deliver(runtime, make_event("customer.deleted", gone, event_id="evt_cus_priv_deleted",
                                       created=T0 + 5 * DAY)) == "processed"
    drain(runtime)

    assert_no_personal_data(runtime)
    assert case_counts() == before
    outbox = Path(runtime.settings.email_outbox_dir)
    assert [f for f in outbox.glob("*.eml") if OTHER_EMAIL in f.read_text()]  # the other owner's mail stays
    assert not [f for f in outbox.glob("*.eml") if EMAIL in f.read_text()]  # the local copies went too
    (record,) = rows(runtime, "erasures")
    assert (record["customer_id"], record["requested_by"], record["event_id"]) == (
        "cus_priv", "stripe", "evt_cus_priv_deleted")
    (deleted_event,) = rows(runtime, "events", id="evt_cus_priv_deleted")
    assert deleted_event["status"] == "processed" and is_stripped(deleted_event["payload"])
    # Ids, amounts and states stay.
    (case,) = rows(runtime, "cases", invoice_id="in_priv")
    assert (case["state"], case["amount_due"], case["recovered_amount"]) == ("recovered", 4200, 4200)
    assert all(e["template"] and e["status"] == "sent" for e in rows(runtime, "emails", customer_id="cus_priv"))
    (card,) = rows(runtime, "cards", customer_id="cus_priv")
    assert (card["brand"], card["last4"], card["exp_year"], card["fingerprint"]) == (None, None, None, None)
    # Erasure is idempotent: the same event again (a replay) changes nothing.
    assert deliver(runtime, make_event("customer.deleted", gone, event_id="evt_cus_priv_deleted_again",
                                       created=T0 + 5 * DAY + 1)) == "processed"
    assert len(rows(runtime, "erasures")) == 1
    assert_no_personal_data(runtime)


# -- acceptance: dunning customers erase, and later events --------------------------------------
def test_erase_acts_at_once_and_a_later_payment_failed_leaves_nothing_and_sends_nothing(priv_runtime):
    runtime, fake = priv_runtime
    history(runtime, fake, recover=False)
    (case,) = rows(runtime, "cases", invoice_id="in_priv")
    assert case["state"] == "failing"
    emails_before = len(rows(runtime, "emails", customer_id="cus_priv"))
    total_cases = sum(case_counts().values())
    settle_sqlite_file(runtime)

    out = run("customers", "erase", "cus_priv", "--reason", f"GDPR art. 17, asked by {EMAIL}", "--json")
    result = json.loads(out)
    assert result["already_erased"] is False and result["cases_closed"] == 1
    assert_no_personal_data(runtime)
    (record,) = rows(runtime, "erasures")
    assert record["reason"] == "GDPR art. 17, asked by [address]" and record["requested_by"].startswith("cli:")
    (case,) = rows(runtime, "cases", invoice_id="in_priv")
    assert case["state"] == "voided"
    (last,) = [t for t in rows(runtime, "case_transitions", case_id=case["id"]) if t["to_state"] == "voided"]
    assert last["trigger"] == "customer_deleted"
    assert sum(case_counts().values()) == total_cases
    assert len(rows(runtime, "emails", customer_id="cus_priv")) == emails_before  # closing sent nothing

    # Stripe goes on: another failed invoice, with the email in customer_email, and a customer.updated.
    fake.add_invoice("in_priv_2", "cus_priv", 990, "usd", subscription="sub_cus_priv")
    assert deliver(runtime, failed_invoice("in_priv_2", "cus_priv", EMAIL, NAME, T0 + 6 * DAY)) == "processed"
    assert deliver(runtime, make_event("customer.updated", customer_object("cus_priv", EMAIL, NAME),
                                       event_id="evt_cu_late", created=T0 + 6 * DAY + 5)) == "processed"
    outbox = Path(runtime.settings.email_outbox_dir)
    files_before = set(outbox.glob("*.eml"))
    # An event type no handler processes (stored as ignored) about the erased customer: stored stripped.
    charge = {"id": "ch_priv_late", "object": "charge", "customer": "cus_priv", "receipt_email": EMAIL,
              "billing_details": {"name": NAME, "email": EMAIL, "phone": PHONE, "address": ADDRESS}}
    assert post_event(admin_client(runtime), make_event("charge.failed", charge, event_id="evt_charge_late",
                                                        created=T0 + 6 * DAY + 9)).status_code == 200
    (ignored,) = rows(runtime, "events", id="evt_charge_late")
    assert ignored["status"] == "ignored" and is_stripped(ignored["payload"])
    tick(runtime, T0 + 12 * DAY)
    drain(runtime)
    assert len(rows(runtime, "emails", customer_id="cus_priv")) == emails_before  # no email, ever
    new_files = set(outbox.glob("*.eml")) - files_before
    assert new_files  # the other customer's steps did send
    assert not [f for f in new_files if EMAIL in f.read_text()]
    assert_no_personal_data(runtime)
    # Asking again is harmless and says so; a payment link for the erased customer is refused.
    assert json.loads(run("customers", "erase", "cus_priv", "--reason", "again", "--json"))["already_erased"]
    refused = admin_client(runtime).simulate_post("/payment-links", body=json.dumps({"invoice": "in_priv_2"}),
                                                  headers=bearer())
    assert refused.status_code == 400 and "erased" in refused.json["error"]


def test_post_customers_erase_needs_the_admin_token_and_a_reason(priv_runtime):
    runtime, fake = priv_runtime
    history(runtime, fake)
    client = admin_client(runtime)
    path = "/customers/cus_priv/erase"
    assert client.simulate_post(path, body='{"reason": "x"}', headers={
        "Authorization": "Bearer wrong-token-wrong-token-0000"}).status_code == 401
    assert client.simulate_post(path, body="{}", headers=bearer()).status_code == 400
    assert client.simulate_post("/customers/cus_nobody_here/erase", body='{"reason": "asked"}',
                                headers=bearer()).status_code == 404
    answer = client.simulate_post(path, body=json.dumps({"reason": "ticket 4411", "requested_by": "agent 7"}),
                                  headers=bearer())
    assert answer.status_code == 200, answer.text
    assert answer.json["already_erased"] is False and answer.json["customer"] == "cus_priv"
    assert rows(runtime, "erasures")[0]["requested_by"] == "api:agent 7"
    assert_no_personal_data(runtime)


# -- export ---------------------------------------------------------------------------------------
def test_export_prints_everything_held_about_the_customer_and_after_erasure_what_is_left(priv_runtime):
    runtime, fake = priv_runtime
    history(runtime, fake)
    doc = json.loads(run("customers", "export", "cus_priv"))
    assert doc["customer"]["email"] == EMAIL and doc["customer"]["metadata"]["phone"] == PHONE
    (case,) = doc["cases"]
    assert case["invoice_id"] == "in_priv" and [t["to_state"] for t in case["transitions"]][-1] == "recovered"
    assert {e["template"] for e in doc["emails"]} >= {"payment-failed", "reminder", "payment-link"}
    assert all(e["content_held"] and NAME in e["body_text"] for e in doc["emails"] if e["template"] != "payment-link")
    assert doc["payment_links"][0]["note"] == NOTE
    assert doc["cards"][0]["fingerprint"] == FINGERPRINT
    assert {e["type"] for e in doc["events"]} >= {"customer.created", "invoice.payment_failed", "invoice.paid",
                                                  "payment_method.attached"}
    assert all(e["payload_held"] and e["payload"]["id"] == e["id"] for e in doc["events"])
    assert "in_other" not in json.dumps(doc) and OTHER_EMAIL not in json.dumps(doc)
    # Every customer table of the schema has its place in the document.
    for name in customer_tables(runtime.db.tables):
        assert {"customers": "customer", "erasures": "erasure"}.get(name, name) in doc or name == "case_transitions"

    run("customers", "erase", "cus_priv", "--reason", "asked")
    after = json.loads(run("customers", "export", "cus_priv"))
    assert after["erasure"]["reason"] == "asked" and after["customer"]["email"] is None
    assert not any(e["payload_held"] for e in after["events"])
    assert not any(e["content_held"] for e in after["emails"])
    assert not any(n in json.dumps(after, ensure_ascii=False) for n in NEEDLES)


def test_every_table_with_a_customer_or_invoice_id_is_covered_by_export_and_erase():
    """Read from schema.sql: a table holding a customer_id or an invoice id (or a case of one) must be
    found by erase and export, and each of its columns declared erased or kept (worker/privacy/customer_data.py)."""
    engine = create_engine("sqlite://")
    with engine.begin() as conn:
        for statement in schema_statements():
            conn.exec_driver_sql(statement)
    from sqlalchemy import MetaData
    metadata = MetaData()
    metadata.reflect(engine)
    tables = dict(metadata.tables)
    holding = {name for name, table in tables.items()
               if any(c.name in ("customer_id", "invoice_id", "customer", "invoice")
                      or c.name.endswith(("_customer_id", "_invoice_id")) for c in table.c)}
    assert holding, "schema.sql has no table with a customer_id: the check would prove nothing"
    covered = set(customer_tables(tables))
    assert holding <= covered, f"not covered by export and erase: {sorted(holding - covered)}"
    assert unclassified(tables) == {}, "columns neither erased nor kept in worker/privacy/customer_data.py"
    assert set(ERASED) == set(KEPT)


# -- retention ------------------------------------------------------------------------------------
def prune(*args, code: int = 0) -> dict:
    return json.loads(run("data", "prune", *args, "--json", code=code))


def test_prune_at_40_days_strips_old_payloads_and_contents_and_a_redelivery_is_answered_and_sends_nothing(
        priv_runtime):
    runtime, fake = priv_runtime
    history(runtime, fake, recover=False)
    events_before = {e["id"]: e for e in rows(runtime, "events")}
    sent = [e for e in rows(runtime, "emails") if e["status"] == "sent"]
    undelivered = sent[0]["id"]
    with runtime.db.transaction() as conn:  # one email still owed: never pruned
        emails = runtime.db.table("emails")
        conn.execute(update(emails).where(emails.c.id == undelivered).values(status="pending"))
        events = runtime.db.table("events")
        conn.execute(update(events).where(events.c.id == "evt_cc_other").values(status="failed"))
    at = (utcnow() + timedelta(days=40)).isoformat() + "Z"

    dry = prune("--at", at, "--dry-run")
    assert dry["dry_run"] and dry["removed"]["events.payload"] == len(events_before) - 1
    assert dry["removed"]["emails.content"] == len(sent) - 1
    assert not any(is_stripped(e["payload"]) for e in rows(runtime, "events"))  # dry: nothing removed
    text_out = run("data", "prune", "--at", at, "--dry-run")
    assert "events.payload" in text_out and "would remove" in text_out

    done = prune("--at", at)
    assert done["removed"]["events.payload"] == len(events_before) - 1
    assert done["removed"]["emails.content"] == len(sent) - 1 and done["removed"]["cases"] == 0
    after = {e["id"]: e for e in rows(runtime, "events")}
    assert set(after) == set(events_before)  # ids stay
    for event_id, row in after.items():
        assert is_stripped(row["payload"]) == (event_id != "evt_cc_other")
        assert (row["type"], row["created"]) == (events_before[event_id]["type"], events_before[event_id]["created"])
        if is_stripped(row["payload"]):
            kept = json.loads(row["payload"])
            assert kept["id"] == event_id and kept["data"]["object"]["id"]
    for email in rows(runtime, "emails"):
        if email["id"] == undelivered:
            assert email["body_text"] and email["recipient"]
        elif email["status"] == "sent":
            assert (email["subject"], email["body_text"], email["body_html"], email["recipient"]) == ("", "", "", "")
            assert email["template"] and email["sent_at"] and email["provider_message_id"]
    assert prune("--at", at)["removed"]["events.payload"] == 0  # a second run finds nothing more

    # Stripe re-delivers an old event: 2xx, nothing stored twice, nothing sent.
    emails_before = len(rows(runtime, "emails"))
    replayed = failed_invoice("in_priv", "cus_priv", EMAIL, NAME, T0)
    replayed["id"] = [e for e, r in events_before.items() if r["type"] == "invoice.payment_failed"
                      and "in_priv" in r["payload"] and "in_priv_" not in r["payload"]][0]
    answer = post_event(admin_client(runtime), replayed)
    assert answer.status_code == 200
    drain(runtime)
    assert len(rows(runtime, "emails")) == emails_before
    assert len(rows(runtime, "events")) == len(events_before)
    # Replaying a stripped event does nothing rather than failing on a payload that is gone.
    from worker.intake.processing import process_event
    with runtime.db.transaction() as conn:
        conn.execute(update(events).where(events.c.id == replayed["id"]).values(status="received"))
    assert process_event(runtime, replayed["id"]) == "processed"


def test_prune_at_420_days_deletes_a_closed_case_with_all_its_rows_and_keeps_an_open_one_whole(priv_runtime):
    runtime, fake = priv_runtime
    history(runtime, fake)  # in_priv recovered (closed now); in_other stays open, as old
    (closed,) = rows(runtime, "cases", invoice_id="in_priv")
    (open_case,) = rows(runtime, "cases", invoice_id="in_other")
    assert closed["closed_at"] and open_case["closed_at"] is None

    def held(case):
        return {"transitions": len(rows(runtime, "case_transitions", case_id=case["id"])),
                "emails": len(rows(runtime, "emails", invoice_id=case["invoice_id"])),
                "notices": len(rows(runtime, "platform_notices", case_id=case["id"])),
                "links": len(rows(runtime, "payment_links", invoice_id=case["invoice_id"])),
                "invoice": len(rows(runtime, "invoices", id=case["invoice_id"]))}
    open_before = held(open_case)
    assert held(closed)["transitions"] >= 2 and held(closed)["links"] == 1

    prune("--at", (utcnow() + timedelta(days=399)).isoformat() + "Z")
    assert rows(runtime, "cases", invoice_id="in_priv")  # not yet 400 days

    done = prune("--at", (utcnow() + timedelta(days=420)).isoformat() + "Z")
    assert done["removed"]["cases"] == 1 and done["removed"]["events"] >= 5
    assert not rows(runtime, "cases", invoice_id="in_priv")
    assert held(closed) == {"transitions": 0, "emails": 0, "notices": 0, "links": 0, "invoice": 0}
    assert not rows(runtime, "events")  # every event processed more than 400 days before
    (still,) = rows(runtime, "cases", invoice_id="in_other")
    assert still == open_case and held(open_case) == open_before


def test_the_daily_prune_is_claimed_by_one_host_per_day_and_two_prunes_never_overlap(any_runtime):
    from worker.privacy.retention import PruneBusy, claim_day, prune_lock
    now = utcnow().replace(hour=9, minute=0, second=0, microsecond=0)  # 3 h later is the same UTC day
    assert claim_day(any_runtime.db, now) is True
    assert claim_day(any_runtime.db, now + timedelta(hours=3)) is False  # another host, same day
    assert claim_day(any_runtime.db, now + timedelta(days=1)) is True
    if any_runtime.db.is_sqlite:
        return  # one host by definition
    with prune_lock(any_runtime.db):
        with pytest.raises(PruneBusy):
            with prune_lock(any_runtime.db):
                pass
        assert "another prune" in run("data", "prune", code=1)
    with prune_lock(any_runtime.db):  # released
        pass


def test_prune_works_in_batches_of_at_most_1000_rows(any_runtime):
    """2,500 old events: three transactions of at most 1,000 rows each."""
    from sqlalchemy import event as sa_event

    from worker.privacy.retention import Pruner
    db = any_runtime.db
    events = db.table("events")
    old = utcnow() - timedelta(days=500)
    with db.transaction() as conn:
        conn.execute(events.insert(), [{"id": f"evt_old_{i:05d}", "type": "invoice.paid", "created": T0,
                                        "livemode": False, "payload": json.dumps({"id": f"evt_old_{i:05d}"}),
                                        "source": "webhook", "received_at": old, "status": "processed",
                                        "attempts": 1, "processed_at": old} for i in range(2500)])
    deletes = []
    sa_event.listen(db.engine, "before_cursor_execute",
                    lambda c, cur, stmt, params, ctx, many: deletes.append(stmt) if stmt.startswith("DELETE FROM events") else None)
    counts = Pruner(any_runtime, utcnow()).run()
    assert counts["events"] == 2500 and len(deletes) == 3


# -- bad input ------------------------------------------------------------------------------------
def test_erase_or_export_of_an_unknown_customer_exits_1_with_one_line(any_runtime):
    for args in (("customers", "erase", "cus_nobody", "--reason", "asked"), ("customers", "export", "cus_nobody")):
        output = run(*args, code=1)
        assert output.strip().splitlines() == ["error: no customer cus_nobody is known"]


def test_prune_with_an_unparsable_instant_exits_2_naming_the_flag(any_runtime):
    output = run("data", "prune", "--at", "next tuesday", code=2)
    assert len(output.strip().splitlines()) == 1 and "--at" in output


@pytest.mark.parametrize("value", ["0", "-3", "1.5", '"35"', "true"])
def test_a_retention_value_that_is_not_a_positive_whole_number_of_days_stops_start_up(runtime, tmp_path, value):
    policy = Path(runtime.settings.dunning_policy).read_text().replace(
        "email_content_days = 35", f"email_content_days = {value}")
    path = tmp_path / "policy.toml"
    path.write_text(policy)
    env = {**cli_env(runtime), "DUNNING_POLICY": str(path)}
    result = CliRunner().invoke(main, ["stats"], env=env)
    from worker import runtime as rt
    rt._current = runtime
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "email_content_days" in lines[0] and "positive whole number" in lines[0]


# -- logs -----------------------------------------------------------------------------------------
def test_a_failure_to_recovery_flow_logs_no_email_name_phone_or_address_at_any_level(make_runtime, capfd):
    with FakeStripeServer() as fake:
        runtime = make_runtime(STRIPE_API_KEY=API_KEY, STRIPE_API_BASE=fake.base_url, LOG_LEVEL="DEBUG")
        history(runtime, fake)  # failure, reminders, payment link, card, payment
        run("customers", "export", "cus_priv")
        run("customers", "erase", "cus_priv", "--reason", "asked")
        captured = capfd.readouterr()
    lines = (captured.err + captured.out).splitlines()
    assert sum(1 for line in lines if line.startswith("{")) > 20  # the flow did log (JSON lines)
    leaks = [(n, line[:200]) for line in lines for n in NEEDLES + [OTHER_EMAIL, OTHER_NAME] if n in line]
    assert not leaks, leaks


def test_the_scheduler_runs_the_prune_in_the_background_once_a_day_on_one_host(any_runtime):
    import threading

    from worker.privacy.retention import DailyPrune
    from worker.scheduling.leadership import Leadership
    leading = Leadership(any_runtime.db)  # the scheduler that starts the prune leads while it runs
    assert leading.is_leader()
    events = any_runtime.db.table("events")
    old = utcnow() - timedelta(days=500)

    def old_event(event_id: str) -> None:
        with any_runtime.db.transaction() as conn:
            conn.execute(events.insert().values(id=event_id, type="invoice.paid", created=T0, livemode=False,
                                                payload="{}", source="webhook", received_at=old,
                                                status="processed", attempts=1, processed_at=old))
    old_event("evt_daily_1")
    now = utcnow().replace(hour=9, minute=0, second=0, microsecond=0)  # 10 min later is the same UTC day
    host_a, host_b = DailyPrune(any_runtime, threading.Event()), DailyPrune(any_runtime, threading.Event())
    assert host_a.maybe_start(now)
    host_a.thread.join(60)
    assert not rows(any_runtime, "events", id="evt_daily_1")
    old_event("evt_daily_2")
    assert not host_b.maybe_start(now + timedelta(minutes=5))  # another host, same day: claimed already
    assert not host_a.maybe_start(now + timedelta(minutes=10))
    assert rows(any_runtime, "events", id="evt_daily_2")
    assert host_b.maybe_start(now + timedelta(days=1))  # the next day, whoever comes first
    host_b.thread.join(60)
    assert not rows(any_runtime, "events", id="evt_daily_2")
    leading.release()
