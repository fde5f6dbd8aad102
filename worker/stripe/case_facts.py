"""What Stripe says of a case now, read before a step (outside any transaction) for handlers/verification.py."""

from __future__ import annotations

import functools

import structlog
from sqlalchemy import Table, bindparam, select

from handlers import dunning, verification
from handlers.stripe_objects import invoice_subscription_id
from handlers.verification import StripeFacts
from worker.infra.unit_of_work import unit_of_work
from worker.pure.sql_terms import one_of
from worker.stripe.gateway import StripeGatewayError, StripeRejected, StripeUnavailable, gateway

log = structlog.get_logger("handlers.verification")


def enabled(runtime) -> bool:
    return bool(runtime.settings.stripe_api_key)


def read(runtime, case: dict) -> StripeFacts:
    """GET the invoice, its subscription and the customer (network I/O: call outside a transaction)."""
    try:
        gw = gateway(runtime)
        invoice = gw.retrieve_invoice(case["invoice_id"])
        subscription_id = invoice_subscription_id(invoice) or case["subscription_id"]
        status = None
        if subscription_id:
            try:
                status = gw.retrieve_subscription(subscription_id).get("status")
            except StripeRejected:  # not found: unknown, never taken as canceled (Stripe keeps canceled ones)
                status = None
        try:
            customer = gw.retrieve_customer(case["customer_id"])
        except StripeRejected as exc:
            customer = {"id": case["customer_id"], "deleted": True} \
                if exc.status == 404 and exc.code == "resource_missing" else None
    except StripeUnavailable as exc:
        log.warning("case.verify_unavailable", case_id=case["id"], error=str(exc)[:300])
        return StripeFacts(unavailable=str(exc)[:300])
    except StripeGatewayError as exc:  # a key or permission problem: as unverified, loudly
        log.error("case.verify_refused", case_id=case["id"], error=str(exc)[:300])
        return StripeFacts(unavailable=str(exc)[:300])
    return StripeFacts(invoice=invoice, subscription_status=status, customer=customer)


@functools.lru_cache(maxsize=16)
def _open_siblings(cases: Table):
    """The customer's other open cases (`b_customer`, not `b_case`), built once."""
    return select(cases).where(cases.c.customer_id == bindparam("b_customer"), cases.c.id != bindparam("b_case"),
                               one_of(cases.c.state, dunning.OPEN_STATES)).order_by(cases.c.opened_at, cases.c.id)


def verify_siblings(runtime, case: dict | None) -> None:
    """Read the customer's other open invoices at Stripe and end those found paid, void or written off
    (one unit of work each, as a step would): an account email lists only invoices still unpaid.

    Network I/O: call outside a transaction. Unreachable Stripe leaves them listed (as a step would)."""
    if not case:
        return
    with runtime.db.reading() as conn:
        siblings = [dict(r) for r in runtime.db.run(conn, _open_siblings(runtime.db.table("cases")), {
            "b_customer": case["customer_id"], "b_case": case["id"]}).mappings().all()]
    for sibling in siblings:
        facts = read(runtime, sibling)
        if facts.unavailable or (verification._ENDS.get((facts.invoice or {}).get("status")) is None
                                 and facts.subscription_status != "canceled"):
            continue
        with unit_of_work(runtime, log=log) as ctx:
            locked = dunning.lock_case(ctx, case_id=sibling["id"])
            if dunning.is_open(locked):
                verification.apply(ctx, locked, facts)
