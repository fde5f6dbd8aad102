"""No SQL expression is built on the hot path (issue 17): a statement is built once per process
(a bound parameter for each value) and reused, so handling the second event of a kind constructs
no `BindParameter` at all. Building a statement anew costs a bind, a coercion and a cache-key walk
per column on every call, more CPU than its round trip.

Each kind of event is handled twice, for two customers: the first warms every statement, the
second must build none. The counter patches `BindParameter.__init__`, which every statement built
from Python values goes through (`column == value`, `.values(row)`, `literal()`); statements built
once construct theirs at first use only.
"""

from __future__ import annotations

import json
import traceback
from collections import Counter

import pytest
from sqlalchemy.sql import elements

from tests.support import card_events as fc
from tests.support.dunning import DAY, T0, at, drain_queues, failed, paid, tick
from tests.support.fake_stripe import API_KEY
from tests.support.helpers import drain, rows
from worker.scheduling.due_steps import enqueue_due_steps


def _handle(runtime, evt: dict) -> None:
    """Store the event and run the process_event actor's function on it (the webhook's message),
    then deliver what it queued, as the send_email actor does."""
    from handlers.registry import known_types
    from worker.intake.event_store import message_args, parse_envelope, store_event

    envelope = parse_envelope(json.dumps(evt))
    store_event(runtime.db, envelope, known_type=envelope.type in known_types())
    before = {e["id"] for e in rows(runtime, "emails")}
    runtime.actors.process_event.fn(*message_args(envelope))
    for email in rows(runtime, "emails"):
        if email["id"] not in before and email["status"] == "pending":
            runtime.actors.send_email.fn(email["id"])


def _events(n: int) -> list[dict]:
    """One customer's case from failure to recovery, with a new default card on the way."""
    customer, invoice = f"cus_once{n}", f"in_once{n}"
    created = T0 + n * 10 * DAY
    return [
        fc.customer_created(customer, created=created - 2000),
        failed(invoice, customer=customer, subscription=f"sub_once{n}", created=created),
        fc.pm_attached(f"pm_once{n}", customer, created=created + 100),
        fc.customer_updated(customer, default_pm=f"pm_once{n}", previous_default=None, created=created + 150),
        paid(invoice, customer=customer, subscription=f"sub_once{n}", created=created + DAY),
    ]


@pytest.fixture
def built(monkeypatch):
    """Where BindParameters are constructed: our innermost frame -> count."""
    seen: Counter = Counter()
    original = elements.BindParameter.__init__

    def counting(self, *args, **kwargs):
        ours = [f for f in traceback.extract_stack()[:-1]
                if "/sqlalchemy/" not in f.filename and "/site-packages/" not in f.filename
                and not f.filename.startswith("<") and "/tests/" not in f.filename]
        where = ours[-1] if ours else None
        seen["/".join(where.filename.split("/")[-2:]) + f":{where.lineno}" if where else "?"] += 1
        original(self, *args, **kwargs)

    monkeypatch.setattr(elements.BindParameter, "__init__", counting)
    return seen


@pytest.mark.parametrize("db", ["postgres", "sqlite"])
def test_the_second_event_of_each_kind_builds_no_statement(make_runtime, built, db):
    runtime = make_runtime(db=db)
    for evt in _events(1):  # warms every statement of these paths
        _handle(runtime, evt)
    built.clear()
    by_type = {}
    for evt in _events(2):
        _handle(runtime, evt)
        by_type[evt["type"]] = dict(built)
        built.clear()
    offenders = {t: where for t, where in by_type.items() if where}
    assert not offenders, "statements built on the hot path (event type: where, count):\n" + json.dumps(offenders, indent=1)
    [case] = [c for c in rows(runtime, "cases") if c["customer_id"] == "cus_once2"]
    assert case["state"] == "recovered"
    assert [r["status"] for r in rows(runtime, "card_retries") if r["customer_id"] == "cus_once2"]


@pytest.mark.parametrize("db", ["postgres", "sqlite"])
def test_the_second_case_through_each_step_builds_no_statement(make_runtime, built, db):
    """Every step of the schedule (reminder, warning, final notice, disruption), then the payment
    that restores service: the first case warms each, the second, an hour behind, builds none."""
    runtime = make_runtime(db=db)
    hour = 3600
    for n in (1, 2):
        _handle(runtime, fc.customer_created(f"cus_step{n}", created=T0 - 2000))
        _handle(runtime, failed(f"in_step{n}", customer=f"cus_step{n}", subscription=f"sub_step{n}",
                                created=T0 + (n - 1) * hour))
    offenders = {}
    for day in (3, 7, 12, 14):
        tick(runtime, T0 + day * DAY)  # the first case's step
        assert enqueue_due_steps(runtime, at(T0 + day * DAY + hour)) == 1  # the scheduler's pass: a batch
        built.clear()
        drain_queues(runtime, ("steps",))  # the second case's step
        drain_queues(runtime, ("emails",))  # and its email
        if built:
            offenders[f"day {day}"] = dict(built)
    for n in (1, 2):
        built.clear()
        _handle(runtime, paid(f"in_step{n}", customer=f"cus_step{n}", subscription=f"sub_step{n}",
                              created=T0 + 15 * DAY + n))
        if n == 2 and built:
            offenders["invoice.paid after disruption"] = dict(built)
    assert not offenders, "statements built on the hot path (step: where, count):\n" + json.dumps(offenders, indent=1)
    states = {c["customer_id"]: c["state"] for c in rows(runtime, "cases")}
    assert states == {"cus_step1": "recovered", "cus_step2": "recovered"}
    restored = [n for n in rows(runtime, "platform_notices") if n["type"] == "service.restored"]
    assert len(restored) == 2


def test_with_a_stripe_key_the_second_case_builds_no_statement(make_runtime, built, fake_stripe):
    """As production runs, with STRIPE_API_KEY: the event's own read, the customer and payment
    prefetches, the facts each step verifies at Stripe, the card retry's charge: the first case
    warms each, the second case, through the same phases, builds none."""
    runtime = make_runtime(db="postgres", STRIPE_API_KEY=API_KEY, STRIPE_API_BASE=fake_stripe.base_url)
    for n in (1, 2):
        fake_stripe.add_subscription(f"sub_key{n}", f"cus_key{n}", default_payment_method=f"pm_old{n}")
        fake_stripe.add_card(f"pm_old{n}", f"cus_key{n}", declines=True)
        fake_stripe.add_card(f"pm_new{n}", f"cus_key{n}", last4="5555", exp_month=8, exp_year=2031, declines=True)
        fake_stripe.add_customer(f"cus_key{n}", default_payment_method=f"pm_new{n}")
        fake_stripe.add_invoice(f"in_key{n}", f"cus_key{n}", 12000, subscription=f"sub_key{n}")

    def phases(n: int):
        customer, invoice, subscription = f"cus_key{n}", f"in_key{n}", f"sub_key{n}"
        created = T0 + (n - 1) * 60
        yield "customer.created", lambda: _handle(runtime, fc.customer_created(customer, created=created - 2000))
        yield "invoice.payment_failed", lambda: _handle(runtime, failed(
            invoice, customer=customer, subscription=subscription, amount=12000, created=created))
        yield "card change and its retry", lambda: (
            _handle(runtime, fc.pm_attached(f"pm_new{n}", customer, last4="5555", exp=(8, 2031),
                                            created=created + DAY)),
            _handle(runtime, fc.customer_updated(customer, default_pm=f"pm_new{n}", previous_default=f"pm_old{n}",
                                                 created=created + DAY + 1)),
            drain(runtime))
        yield "day 3 step", lambda: (enqueue_due_steps(runtime, at(created + 3 * DAY)),
                                     built.clear(),  # the scheduler's pass is a batch, not a case's work
                                     drain(runtime))

        def pay():
            fake_stripe.invoices[invoice]["status"] = "paid"
            _handle(runtime, paid(invoice, customer=customer, subscription=subscription, amount=12000,
                                  created=created + 4 * DAY))
        yield "invoice.paid", pay

    offenders = {}
    for (name, first), (_, second) in zip(phases(1), phases(2)):
        first()
        built.clear()
        second()
        if built:
            offenders[name] = dict(built)
    assert not offenders, "statements built on the hot path (phase: where, count):\n" + json.dumps(offenders, indent=1)
    assert {c["customer_id"]: c["state"] for c in rows(runtime, "cases")} == {"cus_key1": "recovered",
                                                                             "cus_key2": "recovered"}
    assert len(rows(runtime, "card_retries")) == 2
    assert {e["template"] for e in rows(runtime, "emails") if e["customer_id"] == "cus_key2"} >= {"payment-failed", "reminder"}
