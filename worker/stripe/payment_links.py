"""Payment links on request: support asks, the owner of record receives the invoice's own payment page.

Emails added here: payment-link (extra: worker/email_contract.PaymentLinkExtra), dedupe key
handlers.dedupe_keys.payment_link: one email per request.

Why the invoice's hosted page and not a Stripe Payment Link: a Payment Link object sells a
price in a NEW checkout; paying it would leave the failed invoice open. The hosted invoice page
(`hosted_invoice_url`) pays the failed invoice itself, so the normal `invoice.paid` path recovers
the case and restores service. Before handing it out we set which methods that page offers:
POST /v1/invoices/:id payment_settings[payment_method_types] = card, plus ACH Direct Debit
(us_bank_account) and bank transfer (customer_balance funded by bank_transfer) from the
configured minimum of the currency ([payment_links].bank_minimums).

Two steps, each safe to repeat:
  request_links()  validates the request (web or CLI), writes one `payment_links` row per invoice
                   and enqueues `create_payment_link` after commit. Links go to the owner of record
                   only: a body that names any address is refused and nothing is stored or sent.
  create_link()    the actor's job: one Stripe call with the idempotency key
                   `dunning-payment-link:<request id>`, the row updated once (guarded on status),
                   one email (dedupe key per request). A retried job creates neither two links nor two emails.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import and_, func, select, update

from handlers import dedupe_keys
from handlers.context import HandlerContext
from handlers.dunning import OPEN_STATES
from worker.pure.clock import utcnow
from worker.pure.json_text import dumps, loads
from worker.pure.ids import new_id
from worker.stripe.gateway import (
    StripeGatewayError,
    StripeUnavailable,
    gateway,
    payment_method_types_for,
)
from worker.infra.unit_of_work import unit_of_work

log = structlog.get_logger("worker.stripe.payment_links")

INVOICE_ID_RE = re.compile(r"^in_[A-Za-z0-9_]{1,250}$")
CUSTOMER_ID_RE = re.compile(r"^cus_[A-Za-z0-9_]{1,250}$")
# Anything shaped like an address (a@b), anywhere in the body, is refused.
EMAIL_LIKE_RE = re.compile(r"[^\s@]+@[^\s@]+")
RECIPIENT_KEYS = frozenset({
    "email", "emails", "to", "cc", "bcc", "recipient", "recipients", "reply_to", "replyto",
    "address", "addresses", "send_to", "sendto", "mail", "mailto", "customer_email", "receipt_email",
    "notify", "contact",
})
ALLOWED_KEYS = frozenset({"invoice", "customer", "requested_by", "note"})
MAX_REQUESTED_BY = 200
MAX_NOTE = 2000
WINDOW = timedelta(hours=24)
METHOD_NAMES = {
    "card": "Card",
    "us_bank_account": "ACH Direct Debit (US bank account)",
    "customer_balance": "Bank transfer (wire)",
}


class PaymentLinkRefused(Exception):
    """Raised when a payment-link request is refused; `status` is the HTTP status to answer."""

    def __init__(self, status: int, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after  # seconds, for 429


@dataclass(frozen=True)
class LinkRequest:
    invoice: str | None
    customer: str | None
    requested_by: str | None
    note: str | None


# -- validation -----------------------------------------------------------------------------
def _names_a_recipient(value: Any, key: str | None = None) -> str | None:
    """The key (or 'a value') that names an address, looking through the whole body."""
    if key is not None and key.strip().lower().replace("-", "_") in RECIPIENT_KEYS:
        return key
    if isinstance(value, dict):
        for k, v in value.items():
            found = _names_a_recipient(v, str(k))
            if found:
                return found
    elif isinstance(value, list):
        for item in value:
            found = _names_a_recipient(item, key)
            if found:
                return found
    elif isinstance(value, str) and EMAIL_LIKE_RE.search(value):
        return key or "a value"
    if key is not None and EMAIL_LIKE_RE.search(key):
        return "a field name"
    return None


def _optional_text(body: dict, key: str, limit: int, *, single_line: bool) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise PaymentLinkRefused(400, f"'{key}' must be a string")
    value = value.strip()
    if len(value) > limit:
        raise PaymentLinkRefused(400, f"'{key}' is longer than {limit} characters")
    if single_line and ("\n" in value or "\r" in value):
        raise PaymentLinkRefused(400, f"'{key}' must be one line")
    return value or None


def parse_request(body: Any) -> LinkRequest:
    """Validate a request body; raise PaymentLinkRefused(400) with a clear message."""
    if not isinstance(body, dict):
        raise PaymentLinkRefused(400, 'the body must be a JSON object such as {"invoice": "in_..."}')
    named = _names_a_recipient(body)
    if named:
        raise PaymentLinkRefused(
            400, f"payment links are sent to the owner of record only; this request names a recipient "
                 f"address ({named!r}). Remove it: nothing was stored or sent.")
    unknown = sorted(set(body) - ALLOWED_KEYS)
    if unknown:
        raise PaymentLinkRefused(400, f"unknown field(s): {', '.join(unknown)}; "
                                      f"allowed: invoice or customer, requested_by, note")
    invoice, customer = body.get("invoice"), body.get("customer")
    if (invoice is None) == (customer is None):
        raise PaymentLinkRefused(400, 'give exactly one of "invoice" (in_...) or "customer" (cus_...)')
    if invoice is not None and not (isinstance(invoice, str) and INVOICE_ID_RE.match(invoice)):
        raise PaymentLinkRefused(400, '"invoice" must be a Stripe invoice id (in_...)')
    if customer is not None and not (isinstance(customer, str) and CUSTOMER_ID_RE.match(customer)):
        raise PaymentLinkRefused(400, '"customer" must be a Stripe customer id (cus_...)')
    return LinkRequest(invoice=invoice, customer=customer,
                       requested_by=_optional_text(body, "requested_by", MAX_REQUESTED_BY, single_line=True),
                       note=_optional_text(body, "note", MAX_NOTE, single_line=False))


# -- step 1: the request --------------------------------------------------------------------
def request_id_for(idempotency_key: str, invoice_id: str) -> str:
    """A stable request id for a client's Idempotency-Key: the same request sent twice is one request."""
    return "plr_" + hashlib.sha256(f"{idempotency_key}\x00{invoice_id}".encode()).hexdigest()[:28]


def request_links(runtime, body: Any, *, now: datetime | None = None,
                  idempotency_key: str | None = None) -> list[dict[str, str]]:
    """Record a payment-link request (one row per invoice) and enqueue the job after commit.

    Returns [{"id", "invoice"}]. Raises PaymentLinkRefused (400 unknown/paid/malformed, 429 limit).
    """
    request = parse_request(body)
    now = now or utcnow()
    limit = runtime.policy.payment_links.daily_limit_per_invoice
    db = runtime.db
    created: list[dict[str, str]] = []
    new_ids: list[str] = []
    with db.transaction() as conn:
        invoices = _invoices_to_link(db, conn, request, runtime.policy)
        links = db.table("payment_links")
        for invoice in invoices:
            request_id = request_id_for(idempotency_key, invoice["id"]) if idempotency_key else new_id("plr")
            if idempotency_key and conn.execute(select(links.c.id).where(links.c.id == request_id)).first():
                created.append({"id": request_id, "invoice": invoice["id"]})
                continue  # the same request again: answered with the same id, nothing new
            asked, oldest = conn.execute(select(func.count(), func.min(links.c.requested_at)).where(
                links.c.invoice_id == invoice["id"], links.c.requested_at > now - WINDOW)).one()
            if asked >= limit:
                raise PaymentLinkRefused(
                    429, f"a payment link for {invoice['id']} was already asked {asked} times in the last "
                         f"24 hours (limit {limit}); try again later",
                    retry_after=max(1, int((oldest + WINDOW - now).total_seconds()) + 1))
            conn.execute(links.insert().values(
                id=request_id, invoice_id=invoice["id"], customer_id=invoice["customer_id"],
                requested_by=request.requested_by, note=request.note, requested_at=now, enqueued_at=now,
                status="requested",
                amount=invoice["amount_remaining"] or invoice["amount_due"], currency=invoice["currency"]))
            created.append({"id": request_id, "invoice": invoice["id"]})
            new_ids.append(request_id)
    for request_id in new_ids:
        log.info("payment_link.requested", request_id=request_id, requested_by=request.requested_by)
        try:
            runtime.actors.create_payment_link.send(request_id)
        except Exception as exc:  # the row is durable; `dunning payment-link` can be asked again
            log.warning("payment_link.enqueue_failed", request_id=request_id, error=str(exc)[:300])
    return created


def _invoices_to_link(db, conn, request: LinkRequest, policy) -> list[dict]:
    from handlers.facts import is_erased

    invoices, cases, customers = db.table("invoices"), db.table("cases"), db.table("customers")
    if request.invoice:
        row = conn.execute(db.lock(select(invoices).where(invoices.c.id == request.invoice))).mappings().first()
        if row is None:
            raise PaymentLinkRefused(400, f"unknown invoice {request.invoice}")
        if is_erased(conn, db, row["customer_id"]):
            raise PaymentLinkRefused(400, f"the customer of invoice {request.invoice} was erased: no payment link")
        if row["status"] == "paid":
            raise PaymentLinkRefused(400, f"invoice {request.invoice} is already paid")
        if row["status"] != "open":
            raise PaymentLinkRefused(400, f"invoice {request.invoice} is {row['status']}: there is nothing to pay")
        metadata = conn.execute(select(customers.c.metadata).where(customers.c.id == row["customer_id"])).scalar()
        if policy.is_excluded(loads(metadata, {})):
            raise PaymentLinkRefused(400, f"the customer of invoice {request.invoice} is excluded from dunning by "
                                          f"the policy ([exclude]): no payment link is sent")
        return [dict(row)]
    if conn.execute(select(customers.c.id).where(customers.c.id == request.customer)).first() is None:
        raise PaymentLinkRefused(400, f"unknown customer {request.customer}")
    if is_erased(conn, db, request.customer):
        raise PaymentLinkRefused(400, f"customer {request.customer} was erased: no payment link")
    rows = conn.execute(db.lock(
        select(invoices).select_from(invoices.join(cases, cases.c.invoice_id == invoices.c.id))
        .where(and_(invoices.c.customer_id == request.customer, invoices.c.status == "open",
                    cases.c.state.in_(OPEN_STATES)))
        .order_by(invoices.c.id))).mappings().all()
    if not rows:
        raise PaymentLinkRefused(400, f"customer {request.customer} has no unpaid invoice in dunning")
    return [dict(row) for row in rows]


# -- step 2: the job ------------------------------------------------------------------------
def idempotency_key(request_id: str) -> str:
    return f"dunning-payment-link:{request_id}"


def create_link(runtime, request_id: str) -> str:
    """Prepare the invoice's payment page at Stripe, record the link, email the owner once.

    Returns the row's final status; raises StripeUnavailable (transient) so the actor retries.
    """
    links = runtime.db.table("payment_links")
    with runtime.db.reading() as conn:
        row = conn.execute(select(links).where(links.c.id == request_id)).mappings().first()
    if row is None:
        log.warning("payment_link.unknown", request_id=request_id)
        return "unknown"
    if row["status"] != "requested":
        return row["status"]
    from handlers.facts import is_erased
    with runtime.db.reading() as conn:
        if is_erased(conn, runtime.db, row["customer_id"]):
            return _fail(runtime, request_id, "the customer was erased: no link is made")

    try:
        gw = gateway(runtime)
        invoice = gw.retrieve_invoice(row["invoice_id"])
        if invoice.get("status") != "open":
            return _fail(runtime, request_id, f"the invoice is {invoice.get('status')} at Stripe: nothing to pay")
        currency = (invoice.get("currency") or row["currency"] or "").lower()
        amount_due = int(invoice.get("amount_due") or 0)
        methods = payment_method_types_for(amount_due, currency, runtime.policy.payment_links.bank_minimums)
        invoice = gw.offer_payment_methods(row["invoice_id"], methods, currency, idempotency_key(request_id))
    except StripeUnavailable:
        raise
    except StripeGatewayError as exc:
        return _fail(runtime, request_id, str(exc))
    url = invoice.get("hosted_invoice_url")
    if not url:
        return _fail(runtime, request_id, "Stripe gave no hosted_invoice_url (is the invoice finalized?)")
    return _record_and_email(runtime, row, invoice, url, methods, currency)


def _record_and_email(runtime, row, invoice: dict, url: str, methods: list[str], currency: str) -> str:
    db = runtime.db
    now = utcnow()
    expires_at = now + timedelta(hours=runtime.policy.payment_links.expires_after_hours)
    amount = int(invoice.get("amount_remaining", invoice.get("amount_due")) or 0)
    links, cases = db.table("payment_links"), db.table("cases")
    with unit_of_work(runtime, now=now, log=log) as ctx:
        conn = ctx.conn
        claimed = conn.execute(update(links).where(links.c.id == row["id"], links.c.status == "requested").values(
            status="created", stripe_id=invoice.get("id") or row["invoice_id"], url=url, methods=dumps(methods),
            amount=amount, currency=currency, expires_at=expires_at, created_at=now, last_error=None)).rowcount
        if not claimed:
            return "created"
        extra = {"payment_link": {"url": url, "expires_at": expires_at, "amount": amount, "currency": currency},
                 "payment_link_methods": [METHOD_NAMES.get(m, m) for m in methods],
                 "payment_link_method_types": methods}
        case_id = conn.execute(select(cases.c.id).where(cases.c.invoice_id == row["invoice_id"])).scalar()
        if case_id:
            email_id = ctx.effects.case_email(ctx, "payment-link", case_id,
                                              dedupe_keys.payment_link(row["id"], case_id), extra)
        else:
            email_id = ctx.effects.customer_email(ctx, "payment-link", row["customer_id"],
                                                  dedupe_keys.payment_link(row["id"]), extra, invoice_id=row["invoice_id"])
    log.info("payment_link.created", request_id=row["id"], invoice_id=row["invoice_id"], methods=methods,
             email_id=email_id)
    return "created"


def _fail(runtime, request_id: str, message: str) -> str:
    links = runtime.db.table("payment_links")
    with runtime.db.transaction() as conn:
        conn.execute(update(links).where(links.c.id == request_id, links.c.status == "requested")
                     .values(status="failed", last_error=message[:1000]))
    log.warning("payment_link.failed", request_id=request_id, error=message[:300])
    return "failed"
