"""Card events: record every card change; a new default card retries the failed invoice at once.

Emails added here: card-expiring (extra: worker/email_contract.CardExpiringExtra), dedupe key
handlers.dedupe_keys.card_expiring (customer, card, expiry month), the same key the monthly scan
(worker/scheduling/card_expiry.py) uses: one email per card and expiry.

What we keep of a card is brand, last four, expiry, funding, fingerprint, whether it is the
customer's default, and the event that told us (https://docs.stripe.com/api/payment_methods/object).
Never more: no billing details, no name, no address.

When is a card "a new default card" worth an immediate retry of the failed invoice?
  - customer.updated whose previous_attributes show the default changed (handlers/customers.py);
  - payment_method.attached, customer.source.created, setup_intent.succeeded and
    payment_method.automatically_updated for the card that is now the customer's default
    (Stripe sends these in any order: the attach may come after the customer.updated);
  - payment_method.updated / customer.source.updated of the default card only when its number
    or expiry changed (a new billing address is no reason to charge again).
card_retries.dedupe_key (handlers.dedupe_keys.card_retry: invoice, payment method, expiry) makes that
exactly one retry per (invoice, card version), however many of these events arrive and in
whatever order: a new expiry or number on the same payment method (an automatic card update)
retries once more. At most `max_immediate_retries_per_day` (policy, default 3) per invoice in
24 h, so a flapping card never looks like card testing to the bank.
"""

from __future__ import annotations

import functools
from datetime import timedelta
from typing import Any, NamedTuple

from sqlalchemy import Table, bindparam, desc, func, select, update

from handlers import dedupe_keys
from handlers.context import HandlerContext, StripeEvent
from handlers.dunning import OPEN_STATES
from handlers.stripe_objects import card_details, dig, expandable_id
from worker.pure.ids import new_id
from worker.pure.sql_terms import one_of

ACTIVE_SUBSCRIPTION_STATUSES = ("active", "trialing")
CARD_FIELDS = ("brand", "last4", "exp_month", "exp_year", "funding", "fingerprint")
# previous_attributes keys that mean "this is a different card now" (number or expiry changed)
CHANGED_CARD_KEYS = ("exp_month", "exp_year", "last4", "fingerprint", "brand")


# -- handlers -------------------------------------------------------------------------------
def payment_method_changed(ctx: HandlerContext, event: StripeEvent):
    """payment_method.attached / .updated / .automatically_updated (a PaymentMethod object)."""
    pm = event.object
    customer_id = expandable_id(pm.get("customer"))
    details = card_details(pm) if pm.get("type", "card") == "card" else None
    if not customer_id or not details or not pm.get("id"):
        return "ignored"  # a detached PM (customer null) or not a card
    record_card(ctx, event, customer_id, pm["id"], details)
    changed = dig(event.previous_attributes, "card") or {}
    if event.type == "payment_method.updated" and not _card_changed(changed):
        return None
    renewed = event.type != "payment_method.attached" and _card_changed(changed)
    retry_if_default(ctx, customer_id, pm["id"], renewed=renewed)
    return None


def source_changed(ctx: HandlerContext, event: StripeEvent):
    """customer.source.created / .updated (a legacy Card, or a Source of type card)."""
    card = _record_source_card(ctx, event)
    if card is None:
        return "ignored"
    if event.type == "customer.source.updated" and not _card_changed(event.previous_attributes):
        return None
    retry_if_default(ctx, card.customer_id, card.id)
    return None


def source_expiring(ctx: HandlerContext, event: StripeEvent):
    """customer.source.expiring: Stripe's own warning, at the start of the card's last month."""
    card = _record_source_card(ctx, event)
    sent = card and send_card_expiring(ctx, card.customer_id, {"payment_method_id": card.id, **card.details})
    return None if sent else "ignored"


class SourceCard(NamedTuple):
    customer_id: str
    id: str
    details: dict[str, Any]


def _record_source_card(ctx: HandlerContext, event: StripeEvent) -> SourceCard | None:
    """Record the card of a customer.source.* event; None when the source is no customer's card
    (a bank account, an ACH credit transfer source: nothing expires)."""
    source = event.object
    customer_id = expandable_id(source.get("customer"))
    details = card_details(source)
    if not customer_id or not details or not source.get("id"):
        return None
    record_card(ctx, event, customer_id, source["id"], details)
    return SourceCard(customer_id, source["id"], details)


def setup_intent_succeeded(ctx: HandlerContext, event: StripeEvent):
    """setup_intent.succeeded: a card saved through a SetupIntent (payment_method is an id, or expanded)."""
    intent = event.object
    customer_id = expandable_id(intent.get("customer"))
    pm_id = expandable_id(intent.get("payment_method"))
    if not customer_id or not pm_id:
        return "ignored"
    details = card_details(intent["payment_method"]) if isinstance(intent.get("payment_method"), dict) else None
    record_card(ctx, event, customer_id, pm_id, details or known_details(ctx, customer_id, pm_id))
    retry_if_default(ctx, customer_id, pm_id)
    return None


# -- recording ------------------------------------------------------------------------------
def record_card(ctx: HandlerContext, event: StripeEvent, customer_id: str, payment_method_id: str,
                details: dict[str, Any] | None) -> bool:
    """One `cards` row per (event, card); True when this call wrote it (a redelivery writes nothing)."""
    details = details or {}
    values = {
        "id": new_id("card"),
        "customer_id": customer_id,
        "payment_method_id": payment_method_id,
        **{key: details.get(key) for key in CARD_FIELDS},
        "is_default": default_payment_method(ctx, customer_id) == payment_method_id,
        "event_id": event.id,
        "event_type": event.type,
        "recorded_at": ctx.now,
    }
    written = ctx.db.insert_new(ctx.conn, ctx.table("cards"), values, "event_id", "payment_method_id")
    if written and ctx.log is not None:
        ctx.log.info("card.recorded", customer_id=customer_id, payment_method_id=payment_method_id,
                     brand=values["brand"], last4=values["last4"], is_default=values["is_default"])
    return written


def known_details(ctx: HandlerContext, customer_id: str, payment_method_id: str) -> dict[str, Any] | None:
    """The card details of the latest row that knew them (an event naming only the id gets them)."""
    row = ctx.db.run(ctx.conn, _latest_known_card(ctx.table("cards")),
                     {"b_customer": customer_id, "b_payment_method": payment_method_id}).mappings().first()
    return {key: row[key] for key in CARD_FIELDS} if row else None


@functools.lru_cache(maxsize=16)
def _latest_known_card(cards: Table):
    return (select(*(cards.c[key] for key in CARD_FIELDS))
            .where(cards.c.customer_id == bindparam("b_customer"),
                   cards.c.payment_method_id == bindparam("b_payment_method"), cards.c.last4.is_not(None))
            .order_by(desc(cards.c.recorded_at), desc(cards.c.id)).limit(1))


def default_payment_method(ctx: HandlerContext, customer_id: str) -> str | None:
    return ctx.db.run(ctx.conn, _default_payment_method(ctx.table("customers")), {"b_customer": customer_id}).scalar()


@functools.lru_cache(maxsize=16)
def _default_payment_method(customers: Table):
    return select(customers.c.default_payment_method).where(customers.c.id == bindparam("b_customer"))


def _card_changed(previous: dict) -> bool:
    return isinstance(previous, dict) and any(key in previous for key in CHANGED_CARD_KEYS)


# -- immediate retries ----------------------------------------------------------------------
def retry_if_default(ctx: HandlerContext, customer_id: str, payment_method_id: str, *,
                     renewed: bool = False) -> list[str]:
    """Retry the customer's unpaid invoices in dunning with this card, when it is their default now."""
    if default_payment_method(ctx, customer_id) != payment_method_id:
        return []
    return schedule_retries(ctx, customer_id, payment_method_id, renewed=renewed)


def schedule_retries(ctx: HandlerContext, customer_id: str, payment_method_id: str, *,
                     renewed: bool = False) -> list[str]:
    """One card_retries row per unpaid invoice in dunning (one per card version), enqueued after commit."""
    cases, retries = ctx.table("cases"), ctx.table("card_retries")
    found = ctx.db.run(ctx.conn, _unpaid_cases(cases, ctx.table("invoices")), {"b_customer": customer_id}).all()
    scheduled = []
    expiry = card_expiry(known_details(ctx, customer_id, payment_method_id))
    for case_id, invoice_id in found:
        # the case row lock serializes two card events of one customer (PostgreSQL): the version
        # check below then sees the other's retry (a unique key alone cannot, versions differ)
        ctx.db.run(ctx.conn, ctx.db.lock(_case_id(cases)), {"b_case": case_id})
        tried = ctx.db.run(ctx.conn, _tried_expiries(retries),
                           {"b_invoice": invoice_id, "b_payment_method": payment_method_id}).all()
        if any(_same_version(tried_expiry, expiry, renewed) for (tried_expiry,) in tried):
            continue  # this card version was tried on this invoice already
        recent = ctx.db.run(ctx.conn, _retries_since(retries),
                            {"b_invoice": invoice_id, "b_since": ctx.now - timedelta(hours=24)}).scalar()
        if recent >= ctx.policy.max_immediate_retries_per_day:
            if ctx.log is not None:
                ctx.log.warning("card_retry.daily_limit", case_id=case_id, invoice_id=invoice_id,
                                payment_method_id=payment_method_id, retries_24h=recent)
            continue
        retry_id = new_id("cr")
        inserted = ctx.db.insert_new(ctx.conn, retries, {
            "id": retry_id, "dedupe_key": dedupe_keys.card_retry(invoice_id, payment_method_id, expiry),
            "invoice_id": invoice_id, "case_id": case_id, "customer_id": customer_id,
            "payment_method_id": payment_method_id, "card_expiry": expiry,
            "status": "pending", "created_at": ctx.now, "enqueued_at": ctx.now,
        }, "dedupe_key")
        if not inserted:
            continue
        # The decline on the case was about the card before this version: emails must not keep
        # saying "expired" about a card that was just renewed (a new decline sets it again).
        ctx.db.run(ctx.conn, _forget_decline(cases), {"b_case": case_id, "b_now": ctx.now})
        scheduled.append(retry_id)
        ctx.effects.retry_invoice(ctx, retry_id)  # the Stripe job, queued once this transaction commits
        if ctx.log is not None:
            ctx.log.info("card_retry.scheduled", case_id=case_id, invoice_id=invoice_id,
                         payment_method_id=payment_method_id, retry_id=retry_id)
    return scheduled


@functools.lru_cache(maxsize=16)
def _unpaid_cases(cases: Table, invoices: Table):
    """(case id, invoice id) of the customer's open cases whose invoice is still open, oldest first."""
    return (select(cases.c.id, cases.c.invoice_id)
            .select_from(cases.join(invoices, invoices.c.id == cases.c.invoice_id))
            .where(cases.c.customer_id == bindparam("b_customer"), one_of(cases.c.state, OPEN_STATES),
                   invoices.c.status == "open")
            .order_by(cases.c.opened_at, cases.c.id))


@functools.lru_cache(maxsize=16)
def _case_id(cases: Table):
    return select(cases.c.id).where(cases.c.id == bindparam("b_case"))


@functools.lru_cache(maxsize=16)
def _tried_expiries(retries: Table):
    return select(retries.c.card_expiry).where(retries.c.invoice_id == bindparam("b_invoice"),
                                               retries.c.payment_method_id == bindparam("b_payment_method"))


@functools.lru_cache(maxsize=16)
def _retries_since(retries: Table):
    return select(func.count()).select_from(retries).where(retries.c.invoice_id == bindparam("b_invoice"),
                                                           retries.c.created_at > bindparam("b_since"))


@functools.lru_cache(maxsize=16)
def _forget_decline(cases: Table):
    return update(cases).where(cases.c.id == bindparam("b_case")).values(
        last_failure_code=None, last_failure_message=None, version=cases.c.version + 1,
        updated_at=bindparam("b_now"))


def _same_version(tried: str | None, new: str, renewed: bool) -> bool:
    """Is expiry `new` the version already `tried`? An unknown expiry (the default changed before the
    card's own event told us its details) counts as the same, never a second charge on a guess,
    unless Stripe says this event renewed the card (its previous_attributes show the old expiry)."""
    if tried == new or new == "unknown":
        return True
    return tried == "unknown" and not renewed


def card_expiry(details: dict[str, Any] | None) -> str:
    """`<exp year-month>` of a card, or "unknown": with the payment method, the card's version (a new
    expiry on the same payment method is a new version; a new number is a new payment method)."""
    details = details or {}
    try:
        return f"{int(details['exp_year']):04d}-{int(details['exp_month']):02d}"
    except (KeyError, TypeError, ValueError):
        return "unknown"


# -- expiring cards -------------------------------------------------------------------------
def has_active_subscription(ctx: HandlerContext, customer_id: str) -> bool:
    subs = ctx.table("subscriptions")
    return ctx.conn.execute(select(subs.c.id).where(
        subs.c.customer_id == customer_id, subs.c.status.in_(ACTIVE_SUBSCRIPTION_STATUSES)).limit(1)
    ).first() is not None


def send_card_expiring(ctx: HandlerContext, customer_id: str, card: dict[str, Any]) -> str | None:
    """Queue the card-expiring email for an owner with an active subscription; None when not sent."""

    if not card.get("exp_month") or not card.get("exp_year"):
        return None
    customer = ctx.db.row_by(ctx.conn, ctx.table("customers"), id=customer_id)
    if customer is None or customer["deleted"] or not has_active_subscription(ctx, customer_id):
        return None
    from worker.pure.json_text import loads
    if ctx.policy.is_excluded(loads(customer["metadata"], {})):
        return None
    extra = {"card": {key: card.get(key) for key in ("brand", "last4", "exp_month", "exp_year", "funding")}}
    return ctx.effects.customer_email(ctx, "card-expiring", customer_id,
                                      dedupe_keys.card_expiring(customer_id, card), extra)
