"""Builders for the dunning tests: realistic invoice events from ../shared/stripe-data shapes.

Two shapes: the 2025 (basil) invoice of pay-rails/pay (subscription under
`parent.subscription_details.subscription`, prices under `pricing.price_details`) and the 2018
invoice of mozilla-subhub (top-level `subscription`, legacy `plan` lines). Ids, amounts, times
and statuses are replaced; everything else is Stripe's own payload.
"""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta

import dramatiq
from sqlalchemy import select

from tests.support.helpers import load_stripe_file, make_event, post_event, rows
from worker.pure.clock import from_unix, to_unix

DAY = 86400
T0 = 1_795_000_000  # 2026-11-18T...Z: a fixed "first failure" instant for deterministic tests

SHAPES = {
    "2025": ("events/pay/invoice.payment_failed.json", "2025-03-31.basil"),
    "2018": ("events/mozilla-subhub/invoice-payment-failed.json", "2018-02-06"),
}


def _base_invoice(shape: str) -> dict:
    rel, _ = SHAPES[shape]
    data = load_stripe_file(rel)
    obj = data["data"]["object"] if "data" in data else data["object"]
    return copy.deepcopy(obj)


def invoice(invoice_id: str = "in_test_1", *, customer: str = "cus_test_1", subscription: str | None = "sub_test_1",
            shape: str = "2025", amount: int = 2500, currency: str = "usd", status: str = "open",
            attempt_count: int = 1, next_payment_attempt: int | None = None, email: str = "owner@example.com",
            price: str | None = None, card: tuple[str, str] | None = None) -> dict:
    """An invoice object of the given API shape with our ids and amounts."""
    inv = _base_invoice(shape)
    inv.update(id=invoice_id, customer=customer, amount_due=amount, amount_remaining=amount,
               amount_paid=amount if status == "paid" else 0, currency=currency, status=status,
               attempt_count=attempt_count, next_payment_attempt=next_payment_attempt,
               customer_email=email, number=f"NUM-{invoice_id[-6:]}", paid=status == "paid")
    if shape == "2025":
        inv["parent"]["subscription_details"]["subscription"] = subscription
        for line in inv["lines"]["data"]:
            line["parent"]["subscription_item_details"]["subscription"] = subscription
            if price:
                line["pricing"]["price_details"]["price"] = price
    else:
        inv["subscription"] = subscription
        for line in inv["lines"]["data"]:
            line["subscription"] = subscription
            if price:
                line["plan"]["id"] = price
    if card:
        inv["charge"] = {"id": f"ch_{invoice_id}", "object": "charge", "failure_code": "card_declined",
                         "failure_message": "Your card was declined.",
                         "payment_method_details": {"type": "card", "card": {
                             "brand": card[0], "last4": card[1], "exp_month": 4, "exp_year": 2030}}}
    return inv


_counter = [0]


def event(event_type: str, obj: dict, created: int, event_id: str | None = None, shape: str = "2025") -> dict:
    _counter[0] += 1
    return make_event(event_type, obj, event_id=event_id or f"evt_t{_counter[0]:06d}_{obj['id']}", created=created,
                      api_version=SHAPES.get(shape, SHAPES["2025"])[1])


def failed(invoice_id="in_test_1", created=T0, **kw) -> dict:
    shape = kw.get("shape", "2025")
    kw.setdefault("next_payment_attempt", created + 3 * DAY)
    return event("invoice.payment_failed", invoice(invoice_id, **kw), created, shape=shape)


def paid(invoice_id="in_test_1", created=T0 + DAY, **kw) -> dict:
    shape = kw.get("shape", "2025")
    return event("invoice.paid", invoice(invoice_id, status="paid", **kw), created, shape=shape)


def ended(event_type: str, invoice_id="in_test_1", created=T0 + DAY, **kw) -> dict:
    status = {"invoice.voided": "void", "invoice.marked_uncollectible": "uncollectible",
              "invoice.paid": "paid", "invoice.payment_succeeded": "paid"}[event_type]
    return event(event_type, invoice(invoice_id, status=status, **kw), created, shape=kw.get("shape", "2025"))


def subscription_deleted(subscription="sub_test_1", customer="cus_test_1", created=T0 + DAY) -> dict:
    obj = {"id": subscription, "object": "subscription", "customer": customer, "status": "canceled",
           "metadata": {}}
    return event("customer.subscription.deleted", obj, created)


def at(seconds: int) -> datetime:
    return from_unix(seconds)


# -- running the real pipeline without the email/notice senders ------------------------------
def know_owner(runtime, evt: dict) -> None:
    """Make the owner of record known, as a customer.created would, before an invoice event.

    Mail goes to the owner of record only (the Stripe customer's email), never to an invoice's
    `customer_email` snapshot (issue 12). These tests build invoice events whose customer_email
    says who the owner is meant to be: this delivers that customer once (created=1, so any
    customer event of the test itself is newer and wins).
    """
    obj = (evt.get("data") or {}).get("object") or {}
    customer_id, email = obj.get("customer"), obj.get("customer_email")
    if not evt.get("type", "").startswith("invoice.") or not isinstance(customer_id, str) or not email:
        return
    known = rows(runtime, "customers", id=customer_id)
    if known and known[0]["source_created"]:
        return
    owner = {"id": customer_id, "object": "customer", "email": email, "name": obj.get("customer_name"),
             "metadata": {}, "invoice_settings": {"default_payment_method": None}}
    _store_and_process(runtime, make_event("customer.created", owner, event_id=f"evt_owner_{customer_id}",
                                           created=1))


def post(runtime, client, evt: dict) -> None:
    """POST the event, signed, to the webhook of `client`, its owner known first, then run the events
    and steps it queued (a real dramatiq Worker on the stub broker)."""
    know_owner(runtime, evt)
    assert post_event(client, evt).status_code == 200
    drain_queues(runtime, ("events", "steps"))


def deliver(runtime, evt: dict) -> str:
    """Store the event as the webhook does and process it in this thread; return its status."""
    know_owner(runtime, evt)
    return _store_and_process(runtime, evt)


def _store_and_process(runtime, evt: dict) -> str:
    from handlers.registry import known_types
    from worker.intake.event_store import message_args, parse_envelope, store_event
    from worker.intake.processing import process_event

    envelope = parse_envelope(json.dumps(evt))
    store_event(runtime.db, envelope, known_type=envelope.type in known_types())
    return process_event(runtime, *message_args(envelope))  # as the webhook's message asks


def tick(runtime, moment: datetime | int) -> int:
    """A scheduler that ran all along up to `moment`: each due step runs at its own due instant.

    Since issue 12 a LATE pass (one tick long after several steps fell due) catches up with the
    latest step only; `tick_late` is that single pass. Returns how many step messages were enqueued.
    """
    from sqlalchemy import func

    if isinstance(moment, int):
        moment = at(moment)
    cases = runtime.db.table("cases")
    enqueued = 0
    for _ in range(200):
        with runtime.db.reading() as conn:
            due = conn.execute(select(func.min(cases.c.next_step_at)).where(
                cases.c.next_step_at <= moment)).scalar()
        if due is None:
            break
        enqueued += tick_late(runtime, due)
    return enqueued


def tick_late(runtime, moment: datetime | int) -> int:
    """One scheduler pass as of `moment` (after downtime: late steps catch up), then run its messages."""
    from worker.scheduling.due_steps import enqueue_due_steps

    if isinstance(moment, int):
        moment = at(moment)
    enqueued = enqueue_due_steps(runtime, moment)
    drain_queues(runtime, ("steps",))
    # Deliver the emails the steps queued, as the service does: a disruption waits for the warning's
    # delivery (issue 12), so a test moving time must let the mail go out like the real sender would.
    drain_queues(runtime, ("emails",))
    return enqueued


def drain_queues(runtime, queues: tuple[str, ...], timeout: float = 30.0, threads: int = 2) -> None:
    """Run a real dramatiq Worker on the stub broker for these queues only, until they are empty.

    (Email and notice delivery is the outbox senders' business and has its own tests; here the
    decisions are checked on the rows they leave.)
    """
    broker = runtime.broker
    present = [q for q in queues if q in broker.queues]
    if not present:
        return
    worker = dramatiq.Worker(broker, queues=set(present), worker_timeout=20, worker_threads=threads)
    worker.start()
    try:
        for queue in present:
            broker.join(queue, timeout=int(timeout * 1000), fail_fast=True)
    finally:
        worker.stop()


def emails(runtime, **where) -> list[dict]:
    return sorted(rows(runtime, "emails", **where), key=lambda r: (r["created_at"], r["id"]))


def templates(runtime, **where) -> list[str]:
    return [e["template"] for e in emails(runtime, **where)]


def notices(runtime, **where) -> list[str]:
    return [n["type"] for n in sorted(rows(runtime, "platform_notices", **where),
                                       key=lambda r: (r["account_id"], r["seq"]))]


def case_of(runtime, invoice_id: str = "in_test_1") -> dict | None:
    found = rows(runtime, "cases", invoice_id=invoice_id)
    return found[0] if found else None


def transitions(runtime, case_id: str) -> list[tuple]:
    t = runtime.db.table("case_transitions")
    with runtime.db.engine.connect() as conn:
        return [(r.from_state, r.to_state, r.trigger) for r in
                conn.execute(select(t).where(t.c.case_id == case_id).order_by(t.c.at, t.c.id))]


def open_case(runtime, fake, invoice_id: str, *, customer: str = "cus_owner",
              amount: int = 12000, currency: str = "usd", subscription: str | None = "sub_owner",
              email: str = "owner@example.com", created: int = T0) -> None:
    """A failed invoice through the real pipeline (invoice.payment_failed -> a case in `failing`),
    and the same invoice at the fake Stripe (a FakeStripe, or None)."""
    if fake is not None:
        fake.add_invoice(invoice_id, customer, amount, currency, subscription=subscription)
        if customer not in fake.customers:
            fake.add_customer(customer, email=email)
    assert deliver(runtime, failed(invoice_id, customer=customer, amount=amount, currency=currency,
                                   subscription=subscription, email=email, created=created)) == "processed"


def bare_invoice(invoice_id: str, *, customer: str, subscription: str, status: str, number: str, email: str,
                 amount: int = 2500, currency: str = "usd", attempt_count: int = 1,
                 subscription_metadata: dict | None = None, lines: list | None = None, **extra) -> dict:
    """A hand-written invoice of the 2025 (basil) shape with only the fields the service reads: for the
    suites that post thousands of events (no payload file read per event). `extra` overrides any field."""
    return {"id": invoice_id, "object": "invoice", "customer": customer, "status": status, "currency": currency,
            "amount_due": amount, "amount_paid": amount if status == "paid" else 0,
            "amount_remaining": 0 if status == "paid" else amount, "attempt_count": attempt_count,
            "number": number, "customer_email": email,
            "parent": {"type": "subscription_details",
                       "subscription_details": {"subscription": subscription,
                                                "metadata": subscription_metadata or {}}},
            "lines": {"object": "list", "data": lines or []}, **extra}


__all__ = ["DAY", "T0", "at", "bare_invoice", "case_of", "deliver", "know_owner", "drain_queues", "emails", "ended", "event", "failed",
           "invoice", "notices", "open_case", "paid", "subscription_deleted", "templates", "tick", "tick_late", "timedelta", "to_unix",
           "transitions"]
