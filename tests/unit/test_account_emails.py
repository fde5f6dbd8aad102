"""One email per account and step (issue 14): several unpaid invoices of one customer, one email each step.

Events are posted signed to the real webhook, processed by real dramatiq Workers on the stub broker,
stepped by the scheduler as of chosen instants, and delivered to a local fake SendGrid: the checks
are on what SendGrid received and on the email_steps rows (each invoice's step satisfied once).
"""

from __future__ import annotations

import json
from collections import Counter

import falcon.testing
import pytest

from handlers import dedupe_keys
from tests.support import dunning as fx
from tests.support.fake_receivers import scripted_server
from tests.support.dunning import DAY, T0, open_case, post
from tests.support.helpers import post_event, rows
from worker.web.app import create_app

SENDGRID_KEY = "SG.account-emails-test-key-0123456789"
STEP_TEMPLATES = ["payment-failed", "reminder", "disruption-warning", "final-notice", "service-disrupted"]


def accepted(n, request):
    return 202, {"X-Message-Id": f"sg-msg-{n}"}, b""


def failed_invoice(invoice_id: str, amount: int, *, created: int = T0, currency: str = "usd",
                   subscription: str | None = None) -> dict:
    evt = fx.failed(invoice_id, customer="cus_acct", subscription=subscription or f"sub_{invoice_id}",
                    amount=amount, currency=currency, created=created)
    evt["data"]["object"]["hosted_invoice_url"] = f"https://invoice.stripe.com/i/acct_{invoice_id}"
    return evt


def sent(sendgrid) -> list[dict]:
    """What SendGrid accepted, as its JSON bodies, in order."""
    return [json.loads(r["raw"]) for r in sendgrid.requests if r.get("answered") == 202]


def text_of(body: dict) -> str:
    return next(c["value"] for c in body["content"] if c["type"] == "text/plain")


def html_of(body: dict) -> str:
    return next(c["value"] for c in body["content"] if c["type"] == "text/html")


def satisfied_steps(runtime) -> Counter:
    """(invoice, step) -> how many emails satisfy it: email_steps rows, and a lone invoice's step email
    (emails.kind "step": its dedupe key, handlers.dedupe_keys.step_email, is its claim)."""
    claims = rows(runtime, "email_steps")
    emails = {e["id"]: e for e in rows(runtime, "emails")}
    assert all(claim["email_id"] in emails for claim in claims)
    invoice_of = {c["id"]: c["invoice_id"] for c in rows(runtime, "cases")}
    got = Counter((c["invoice_id"], c["step"]) for c in claims)
    claimed_keys = {c["dedupe_key"] for c in claims}
    for email in emails.values():
        if email["kind"] == "step" and email["dedupe_key"] not in claimed_keys:
            got[(invoice_of[email["case_id"]], email["step"])] += 1
    return got


def assert_each_step_satisfied_once(runtime) -> None:
    assert set(satisfied_steps(runtime).values()) <= {1}


@pytest.fixture
def web_sendgrid(make_runtime, request):
    with scripted_server(accepted) as sendgrid:
        runtime = make_runtime(db=request.param, SENDGRID_API_KEY=SENDGRID_KEY, SENDGRID_API_HOST=sendgrid.url)
        yield runtime, falcon.testing.TestClient(create_app(runtime)), sendgrid


@pytest.mark.parametrize("web_sendgrid", ["sqlite", "postgres"], indirect=True)
def test_two_failing_invoices_of_one_customer_get_one_email_per_step_listing_both_with_the_total(web_sendgrid):
    runtime, client, sendgrid = web_sendgrid
    first, second = failed_invoice("in_acct_a", 4900), failed_invoice("in_acct_b", 12000, created=T0 + 60)
    post(runtime, client, first)
    post(runtime, client, second)
    post(runtime, client, first)  # a replayed event adds nothing
    fx.drain_queues(runtime, ("emails",))
    fx.tick(runtime, T0 + 20 * DAY)
    fx.tick(runtime, T0 + 20 * DAY)  # a second pass over the same instant adds nothing

    bodies = sent(sendgrid)
    templates = [b["headers"]["X-Dunning-Template"] for b in bodies]
    assert templates == STEP_TEMPLATES  # one email per step, not one per invoice and step
    for body in bodies:
        assert body["headers"]["X-Dunning-Invoice"] == "in_acct_a,in_acct_b"
        assert body["headers"]["X-Dunning-Customer"] == "cus_acct"
        assert body["personalizations"] == [{"to": [{"email": "owner@example.com"}]}]
    reminder = next(b for b in bodies if b["headers"]["X-Dunning-Template"] == "reminder")
    text, html = text_of(reminder), html_of(reminder)
    for part in (text, html):
        assert "USD 169.00" in part
        assert "NUM-acct_a" in part and "NUM-acct_b" in part
        assert "$49.00" in part and "$120.00" in part
        assert "https://invoice.stripe.com/i/acct_in_acct_a" in part
        assert "https://invoice.stripe.com/i/acct_in_acct_b" in part
    # each invoice keeps its own case and timeline; each step of each invoice satisfied exactly once
    for invoice_id in ("in_acct_a", "in_acct_b"):
        case = fx.case_of(runtime, invoice_id)
        assert case["state"] == "disrupted"
        assert sorted(step for (inv, step) in satisfied_steps(runtime) if inv == invoice_id) == [0, 1, 2, 3, 4]
    assert_each_step_satisfied_once(runtime)
    assert {e["status"] for e in rows(runtime, "emails")} == {"sent"}
    for email in rows(runtime, "emails"):  # an email covering both invoices is an account email
        assert (email["kind"], email["step"]) == ("account-step", None)
        assert email["dedupe_key"] == dedupe_keys.account_step_email(
            "cus_acct", email["template"], [(c["invoice_id"], c["step"]) for c in rows(runtime, "email_steps")
                                            if c["email_id"] == email["id"]]).value
    # the second invoice's story (console, `dunning cases show`) shows the emails that covered it
    from sqlalchemy import select

    from worker.infra.db import about_case
    emails_t, case_b = runtime.db.table("emails"), fx.case_of(runtime, "in_acct_b")
    with runtime.db.engine.connect() as conn:
        story = conn.execute(select(emails_t.c.template).where(about_case(emails_t, "in_acct_b", case_b["id"]))
                             .order_by(emails_t.c.created_at)).scalars().all()
    assert story == STEP_TEMPLATES


@pytest.mark.parametrize("web_sendgrid", ["sqlite"], indirect=True)
def test_a_lone_invoice_email_shows_no_list_and_names_its_invoice_as_before(web_sendgrid):
    runtime, client, sendgrid = web_sendgrid
    post(runtime, client, failed_invoice("in_alone", 4900))
    fx.drain_queues(runtime, ("emails",))
    [body] = sent(sendgrid)
    assert body["headers"]["X-Dunning-Invoice"] == "in_alone"
    assert "UNPAID INVOICES" not in text_of(body) and "Total owed" not in html_of(body)
    [email] = rows(runtime, "emails")
    assert email["dedupe_key"] == f"case:{email['case_id']}:step:0" and email["invoice_ids"] is None
    assert (email["kind"], email["step"]) == ("step", 0)


@pytest.mark.parametrize("web_sendgrid", ["sqlite", "postgres"], indirect=True)
def test_an_invoice_failing_later_gets_its_own_steps_sent_once_each_listing_every_unpaid_invoice(web_sendgrid):
    runtime, client, sendgrid = web_sendgrid
    post(runtime, client, failed_invoice("in_early", 4900))
    fx.drain_queues(runtime, ("emails",))  # its day-0 email went out alone
    post(runtime, client, failed_invoice("in_late", 2500, currency="eur", created=T0 + DAY))
    fx.drain_queues(runtime, ("emails",))
    fx.tick(runtime, T0 + 4 * DAY)

    bodies = sent(sendgrid)
    got = [(b["headers"]["X-Dunning-Template"], b["headers"]["X-Dunning-Invoice"]) for b in bodies]
    assert got == [("payment-failed", "in_early"), ("payment-failed", "in_late"),
                   ("reminder", "in_early"), ("reminder", "in_late")]
    late_day0 = text_of(bodies[1])
    assert "NUM-_early" in late_day0 and "NUM-n_late" in late_day0
    assert "USD 49.00" in late_day0 and "EUR 25.00" in late_day0  # one total per currency, never summed
    assert_each_step_satisfied_once(runtime)
    assert satisfied_steps(runtime) == Counter(
        {("in_early", 0): 1, ("in_late", 0): 1, ("in_early", 1): 1, ("in_late", 1): 1})


def test_an_invoice_paid_at_stripe_is_dropped_from_the_list_and_its_case_ends(sqlite_stripe_runtime, fake_stripe):  # noqa: F811
    runtime = sqlite_stripe_runtime
    open_case(runtime, fake_stripe, "in_keep", customer="cus_two", amount=4900, subscription="sub_keep")
    open_case(runtime, fake_stripe, "in_gone", customer="cus_two", amount=12000, subscription="sub_gone")
    fx.drain_queues(runtime, ("emails",))
    [day0] = [e for e in fx.emails(runtime) if e["template"] == "payment-failed"]
    assert day0["invoice_ids"] == "in_keep,in_gone" and "USD 169.00" in day0["body_text"]
    fake_stripe.invoices["in_gone"]["status"] = "paid"  # paid without a webhook reaching us

    fx.tick(runtime, T0 + 3 * DAY)

    [reminder] = [e for e in fx.emails(runtime) if e["template"] == "reminder"]
    assert reminder["invoice_id"] == "in_keep" and reminder["invoice_ids"] is None
    assert "NUM-n_gone" not in reminder["body_text"] and "UNPAID INVOICES" not in reminder["body_text"]
    assert fx.case_of(runtime, "in_gone")["state"] == "recovered"
    assert fx.case_of(runtime, "in_keep")["state"] == "failing"


@pytest.mark.parametrize("web_sendgrid", ["sqlite"], indirect=True)
def test_a_held_email_whose_companion_step_does_not_come_goes_out_when_the_window_lapses(web_sendgrid):
    from datetime import timedelta

    from worker.pure.clock import utcnow
    from worker.delivery.email_delivery import sweep_emails

    runtime, client, sendgrid = web_sendgrid
    post(runtime, client, failed_invoice("in_hold_a", 4900))
    post(runtime, client, failed_invoice("in_hold_b", 12000, created=T0 + 120))  # due 2 min later
    fx.drain_queues(runtime, ("emails",))
    fx.tick(runtime, T0 + 3 * DAY)  # only the first invoice's reminder is due: it waits for the other

    [held] = [e for e in fx.emails(runtime) if e["template"] == "reminder"]
    assert held["status"] == "pending" and held["enqueued_at"] is None
    sweep_emails(runtime, utcnow() + timedelta(seconds=301))  # the window lapsed: sent as it is
    fx.drain_queues(runtime, ("emails",))
    fx.tick(runtime, T0 + 3 * DAY + 120)  # the second invoice's reminder falls due after: its own email

    got = [(b["headers"]["X-Dunning-Template"], b["headers"]["X-Dunning-Invoice"]) for b in sent(sendgrid)]
    assert got == [("payment-failed", "in_hold_a,in_hold_b"), ("reminder", "in_hold_a"), ("reminder", "in_hold_b")]
    assert "USD 169.00" in text_of(sent(sendgrid)[2])  # it still lists both unpaid invoices
    assert_each_step_satisfied_once(runtime)


def test_many_invoices_stepped_by_parallel_workers_and_replayed_get_one_email_per_step(make_runtime):
    """PostgreSQL, four workers: every invoice's step runs in parallel with the others'; each step of
    each invoice is satisfied once, and each step sends one email however the runs interleave."""
    with scripted_server(accepted) as sendgrid:
        runtime = make_runtime(db="postgres", SENDGRID_API_KEY=SENDGRID_KEY, SENDGRID_API_HOST=sendgrid.url)
        client = falcon.testing.TestClient(create_app(runtime))
        events = [failed_invoice(f"in_many_{n}", 1000 * (n + 1), created=T0 + n) for n in range(4)]
        for evt in events + events:  # every event delivered twice
            fx.know_owner(runtime, evt)
            assert post_event(client, evt).status_code == 200
        fx.drain_queues(runtime, ("events", "steps"), threads=4)
        fx.drain_queues(runtime, ("emails",), threads=4)
        for moment in (T0 + 3 * DAY + 10, T0 + 3 * DAY + 10):  # one late pass, twice: all four due at once
            fx.tick_late(runtime, moment)
        fx.drain_queues(runtime, ("steps", "emails"), threads=4)

    bodies = sent(sendgrid)
    # first failures processed at the same instant may each go alone (a writer sees only committed
    # cases); the steps of invoices known to each other fall due together: one reminder for all four
    day0 = [b for b in bodies if b["headers"]["X-Dunning-Template"] == "payment-failed"]
    assert sorted(i for b in day0 for i in b["headers"]["X-Dunning-Invoice"].split(",")) == \
        [f"in_many_{n}" for n in range(4)]
    [reminder] = [b for b in bodies if b["headers"]["X-Dunning-Template"] == "reminder"]
    assert sorted(reminder["headers"]["X-Dunning-Invoice"].split(",")) == [f"in_many_{n}" for n in range(4)]
    assert "USD 100.00" in text_of(reminder)
    assert satisfied_steps(runtime) == Counter({(f"in_many_{n}", step): 1 for n in range(4) for step in (0, 1)})
