"""What Stripe says of a case now, read before a step (outside any transaction) for handlers/verification.py."""

from __future__ import annotations

import structlog

from handlers.stripe_objects import invoice_subscription_id
from handlers.verification import StripeFacts
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
