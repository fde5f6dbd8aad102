"""The operators' everyday commands: cases, outbox and dead letters, each readable and with --json."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from tests.support.cli import run, run_json
from tests.support.dunning import DAY, T0, at, deliver, failed, paid
from tests.support.helpers import rows
from tests.support.queues import (
    dead_letter_an_email_and_an_event,
    dlq_list,
    requeue_by_id,
    the_requeued_email_comes_back_and_the_rest_follow,
)
from worker.pure.clock import utcnow


@pytest.fixture
def two_cases(any_runtime, stripe_data):
    """A failing USD invoice and a recovered JPY one, through the real handlers."""
    deliver(any_runtime, failed("in_ops_usd", created=T0, customer="cus_ops_1", amount=4200))
    deliver(any_runtime, failed("in_ops_jpy", created=T0 + 60, customer="cus_ops_2", amount=5000,
                                currency="jpy", subscription="sub_ops_2"))
    deliver(any_runtime, paid("in_ops_jpy", created=T0 + DAY, customer="cus_ops_2", amount=5000,
                              currency="jpy", subscription="sub_ops_2"))
    return any_runtime


# -- cases ------------------------------------------------------------------------------------
def test_cases_list_filters_by_state_and_customer(two_cases):
    everything = run_json("cases", "list")
    assert {c["invoice_id"] for c in everything} == {"in_ops_usd", "in_ops_jpy"}
    failing = run_json("cases", "list", "--state", "failing")
    assert [c["invoice_id"] for c in failing] == ["in_ops_usd"]
    assert [c["invoice_id"] for c in run_json("cases", "list", "--customer", "cus_ops_2")] == ["in_ops_jpy"]
    assert run_json("cases", "list", "--state", "disrupted") == []
    text = run("cases", "list")
    assert "in_ops_usd" in text and "failing" in text and "in_ops_jpy" in text


def test_cases_show_tells_the_story_of_an_invoice(two_cases):
    detail = run_json("cases", "show", "in_ops_usd")
    assert detail["case"]["state"] == "failing" and detail["case"]["customer_id"] == "cus_ops_1"
    assert [e["type"] for e in detail["events"]] == ["invoice.payment_failed"]
    assert [(t["from_state"], t["to_state"]) for t in detail["transitions"]][0] == (None, "failing")
    assert [e["template"] for e in detail["emails"]] == ["payment-failed"]
    assert "@" in detail["emails"][0]["recipient"] and "***" in detail["emails"][0]["recipient"]
    step = detail["next_step"]
    assert step["email"] == "reminder" and step["day"] == 3
    assert step["due_at"] == (at(T0) + timedelta(days=3)).replace(microsecond=0).isoformat() + "Z"

    recovered = run_json("cases", "show", "in_ops_jpy")
    assert recovered["case"]["state"] == "recovered" and recovered["next_step"] is None
    assert [e["type"] for e in recovered["events"]] == ["invoice.payment_failed", "invoice.paid"]
    assert [t["to_state"] for t in recovered["transitions"]][-1] == "recovered"

    text = run("cases", "show", "in_ops_usd")
    for expected in ("in_ops_usd", "failing", "invoice.payment_failed", "payment-failed", "next step", "reminder"):
        assert expected in text
    assert "owner@example.com" not in text


def test_cases_show_does_not_confuse_invoices_whose_ids_look_alike(two_cases):
    # LIKE treats "_" as a wildcard: in_ops_usd must not match inXops_usd.
    deliver(two_cases, failed("inXops_usd", created=T0 + 5, customer="cus_ops_3", subscription="sub_ops_3"))
    detail = run_json("cases", "show", "in_ops_usd")
    assert all("inXops" not in e["id"] for e in detail["events"])
    assert len(detail["events"]) == 1


def test_cases_show_of_an_unknown_invoice_exits_1(runtime):
    assert "no case or invoice" in run("cases", "show", "in_nope", code=1)


# -- outbox -----------------------------------------------------------------------------------
def test_outbox_lists_pending_emails_and_notices_and_retries_a_failed_email(two_cases):
    runtime = two_cases
    pending = run_json("outbox", "list", "--pending")
    assert {(p["kind"], p["name"]) for p in pending} >= {("email", "payment-failed")}
    assert all(p["status"] in ("pending", "sending") for p in pending)
    assert all("owner@example.com" != p.get("recipient") for p in pending)

    email = rows(runtime, "emails", invoice_id="in_ops_usd")[0]
    emails = runtime.db.table("emails")
    with runtime.db.transaction() as conn:
        conn.execute(emails.update().where(emails.c.id == email["id"])
                     .values(status="failed", attempts=8, last_error="SendGrid 500",
                             next_attempt_at=utcnow() + timedelta(days=1)))
    assert email["id"] in {p["id"] for p in run_json("outbox", "list", "--failed")}
    assert email["id"] not in {p["id"] for p in run_json("outbox", "list", "--pending")}

    queue = runtime.broker.queues["emails"]
    before = queue.qsize()
    done = run_json("outbox", "retry", email["id"])
    assert done == {"id": email["id"], "kind": "email", "previous_status": "failed", "enqueued": "send_email"}
    row = rows(runtime, "emails", id=email["id"])[0]
    assert row["status"] == "pending" and row["attempts"] == 0 and row["next_attempt_at"] <= utcnow()
    assert queue.qsize() == before + 1


def test_outbox_retry_of_a_notice_enqueues_its_account_and_refuses_a_delivered_row(runtime):
    now = utcnow()
    notices = runtime.db.table("platform_notices")
    with runtime.db.transaction() as conn:
        for status, seq in (("failed", 1), ("sent", 2)):
            conn.execute(notices.insert().values(
                id=f"ntc_{status}", dedupe_key=f"notice:sub_1:service.disrupted:{seq}", type="service.disrupted",
                account_id="sub_1", seq=seq, body="{}", status=status, attempts=5, next_attempt_at=now,
                created_at=now))
    done = run_json("outbox", "retry", "ntc_failed")
    assert done["kind"] == "notice" and done["account_id"] == "sub_1"
    message = runtime.broker.queues["notices"].get_nowait()
    assert json.loads(message)["args"] == ["sub_1"]
    assert "already delivered" in run("outbox", "retry", "ntc_sent", code=1)
    assert "no email or notice" in run("outbox", "retry", "em_missing", code=1)


# -- dead letters -------------------------------------------------------------------------------
@pytest.fixture
def redis_runtime(make_runtime):
    from tests.support.services import redis_reachable
    return make_runtime(broker="redis" if redis_reachable() else "embedded")


def test_dlq_lists_dead_letters_and_requeues_them_by_id(redis_runtime):
    runtime = redis_runtime
    client, ns = runtime.broker.client, runtime.settings.queue_namespace
    email, event = dead_letter_an_email_and_an_event(runtime)

    dlq_list()
    assert [d["queue"] for d in run_json("dlq", "list", "--queue", "events")] == ["events"]
    assert "send_email('em_dead_1')" in run("dlq", "list")

    requeue_by_id(email)
    assert client.zcard(f"{ns}:emails.XQ") == 0 and client.hlen(f"{ns}:emails.XQ.msgs") == 0
    assert client.llen(f"{ns}:emails") == 1
    assert client.zcard(f"{ns}:events.XQ") == 1  # the other one stays dead

    the_requeued_email_comes_back_and_the_rest_follow(runtime, email, event)


def test_dlq_on_the_stub_broker_says_why_it_cannot(runtime):
    assert "Redis" in run("dlq", "list", code=2)
