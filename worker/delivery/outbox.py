"""The outbox: effect rows written inside a handler's transaction, delivered once after commit.

A handler decides; this module turns the decision into a durable row in the SAME transaction
(an `emails` row, rendered and addressed, or a `platform_notices` row with its exact body and
its place in the account's order) and registers the sender actor to run after commit. A unique
dedupe key per row makes a second send impossible, whatever the duplicates, retries and
concurrent workers; if the broker message is lost, the scheduler's sweepers find the row.

Recipients come ONLY from `runtime.policy.recipient_for(customer_row)`: billing mail never goes
to an address taken from anywhere else.
"""

from __future__ import annotations

import functools
from datetime import datetime, timedelta
from email.errors import HeaderParseError
from email.headerregistry import Address
from typing import Any

import structlog
from sqlalchemy import bindparam, select, update

from handlers.dunning import DISRUPTED, DISRUPTION_SCHEDULED
from handlers.dedupe_keys import PAYMENT_RECEIVED, STEP, EmailKey
from worker.infra import db as dbmod
from worker.pure.clock import to_unix, utcnow
from worker.pure.ids import new_id
from worker.queue.consumption import run_here_or_send
from worker.observe.logs import mask_email

log = structlog.get_logger("worker.delivery.outbox")

NOTICE_TYPES = (
    "service.disruption_scheduled",
    "service.disrupted",
    "service.restored",
    "service.disruption_cancelled",
    "service.owner_unreachable",  # the owner has no deliverable address (handlers/reachability.py)
)


class UnknownTemplate(ValueError):
    """Raised when a handler names an email template that does not exist."""


class UnknownNoticeType(ValueError):
    """Raised when a handler names a platform notice type outside the contract."""


# -- emails -------------------------------------------------------------------------------
def add_case_email(ctx, template: str, case_id: str, key: EmailKey,
                   extra: dict | None = None, delay_seconds: int = 0, case: dict | None = None,
                   enqueue: bool = True, checked: bool = False) -> str | None:
    """Write the email `template` about case `case_id` to the outbox; None if a duplicate or refused.

    The context comes from the case, its invoice, its customer and the customer's latest card
    (plus `extra`, declared per template in worker/delivery/email_contract.py); the recipient only from the
    policy. A duplicate key (handlers/dedupe_keys.py) adds nothing.
    `case`: the case row as this transaction just wrote or locked it, when the caller holds it.
    `enqueue=False` leaves the row to the sweeper (an account email held for the others' steps);
    `checked`: the caller has just looked for the key (worker/delivery/account_emails.py).
    """
    _check_template(ctx, template, extra)
    # A case this transaction opened has no mail yet (its id is new): no lookup for its step email;
    # nor one it recovered for its payment-received email (written only after a case ended paid, and
    # a case is recovered once). The INSERT's ON CONFLICT on dedupe_key still refuses a second row.
    fresh = (key.kind == STEP and case_id in ctx.opened_cases) or \
        (key.kind == PAYMENT_RECEIVED and case_id in ctx.recovered_cases)
    if not checked and not fresh and _exists(ctx, "emails", key.value):
        return None
    if case is None or case.get("id") != case_id:  # a caller holding the current row passes it: no re-read
        case = _load(ctx, "cases", case_id)
    if case is None:
        raise LookupError(f"case {case_id} is not stored")
    return _add_email(ctx, template, key, extra, case=case,
                      customer_id=case["customer_id"], invoice_id=case["invoice_id"], delay_seconds=delay_seconds,
                      enqueue=enqueue)


def add_customer_email(ctx, template: str, customer_id: str, key: EmailKey,
                       extra: dict | None = None, invoice_id: str | None = None) -> str | None:
    """The same as add_case_email for mail not tied to a case (card-expiring, payment-link...).

    When the invoice has a case, the case's facts (card that failed, disruption date) are used.
    """
    _check_template(ctx, template, extra)
    if _exists(ctx, "emails", key.value):
        return None
    case = None
    if invoice_id:
        cases = ctx.table("cases")
        row = ctx.conn.execute(select(cases).where(cases.c.invoice_id == invoice_id)).mappings().first()
        case = dict(row) if row else None
    return _add_email(ctx, template, key, extra, case=case,
                      customer_id=customer_id, invoice_id=invoice_id)


def compose_email(ctx, template: str, key: EmailKey, extra: dict | None, *, case: dict | None,
                  customer_id: str, invoice_id: str | None):
    """(recipient, rendered email, case as shown) for `template`; None when refused (erased, no owner)."""
    from worker.delivery.email_context import build_context, latest_card
    from worker.delivery.emails import render

    from handlers.facts import erased_in

    if erased_in(ctx, customer_id):
        log.info("email.refused_erased_customer", template=template, customer_id=customer_id, dedupe_key=key.value)
        return None
    customer = _load(ctx, "customers", customer_id)
    recipient = resolve_recipient(ctx.policy, customer)
    if recipient is None:
        log.warning("email.refused_no_recipient", template=template, customer_id=customer_id,
                    dedupe_key=key.value,
                    address=mask_email((customer or {}).get("email")) if customer else None)
        return None
    invoice = _load(ctx, "invoices", invoice_id)
    # The customer's recorded card only fills what the case does not say (worker.delivery.email_context):
    # a case that names the failed card whole (from the payload or the prefetched PaymentIntent) needs none.
    card = None if _names_its_card(case) else latest_card(ctx.conn, ctx.table("cards"), customer_id)
    case = _with_account_disrupt_at(ctx, case)
    clock = getattr(ctx, "clock", None) or ctx.now
    if case and case.get("next_payment_attempt") and case["next_payment_attempt"] <= clock:
        case = {**case, "next_payment_attempt": None}  # a "next automatic retry" in the past is never shown
    from worker.pure.email_time import owner_timezone
    from worker.pure.locales import owner_locale
    # The language is fixed here, when the email is written: a later change of the customer's
    # preferred_locales words the next email, never this one (its row holds the rendered text).
    context = build_context(case=case, invoice=invoice, customer=customer, card=card,
                            extra=extra, settings=ctx.settings, tz=owner_timezone(ctx.policy, customer),
                            locale=owner_locale(ctx.policy, customer))
    rendered = render(template, context, getattr(ctx.settings, "email_templates_dir", None))
    return recipient, rendered, case


def _add_email(ctx, template: str, key: EmailKey, extra: dict | None, *, case: dict | None,
               customer_id: str, invoice_id: str | None, delay_seconds: int = 0,
               enqueue: bool = True) -> str | None:
    """Render and insert the email row; `enqueue=False` leaves it to the sweeper (a held account email)."""
    composed = compose_email(ctx, template, key, extra, case=case, customer_id=customer_id,
                             invoice_id=invoice_id)
    if composed is None:
        return None
    recipient, rendered, case = composed

    email_id = new_id("em")
    inserted = _insert_queued(ctx, "emails", {
        "id": email_id,
        "dedupe_key": key.value,
        "kind": key.kind,
        "step": key.step,
        "template": template,
        "recipient": recipient,
        "subject": rendered.subject,
        "body_text": rendered.text,
        "body_html": rendered.html,
    }, case_id=case["id"] if case else None, invoice_id=invoice_id, customer_id=customer_id,
        now=utcnow(), delay=timedelta(seconds=delay_seconds), queued=enqueue)
    if not inserted:
        return None
    if enqueue:
        enqueue_send(ctx, email_id, delay_seconds)
    log.info("email.queued", email_id=email_id, template=template, customer_id=customer_id,
             invoice_id=invoice_id, dedupe_key=key.value, recipient=mask_email(recipient))
    return email_id


def enqueue_send(ctx, email_id: str, delay_seconds: int = 0) -> None:
    """After commit, deliver this email: at once, in this thread when this process's worker takes
    the emails queue anyway (worker.queue.consumption), else by its sender's message; or held
    briefly by a delayed message (day 0: a payment arriving back to back cancels it at delivery)."""
    runtime = ctx.runtime
    if delay_seconds:
        ctx.after_commit(lambda: runtime.actors.send_email.send_with_options(
            args=(email_id,), delay=delay_seconds * 1000 + 200))
    else:
        ctx.after_commit(lambda: run_here_or_send(runtime.consumption, runtime.actors.send_email, email_id),
                         slow=True)


def _names_its_card(case: dict | None) -> bool:
    return bool(case) and all(case.get(k) for k in ("card_brand", "card_last4", "card_exp_month", "card_exp_year"))


def _with_account_disrupt_at(ctx, case: dict | None) -> dict | None:
    """The case with the date its account will really be disrupted on.

    case.disrupt_at is fixed when the case is scheduled, but the account's timeline is shared:
    paying another invoice of the account can move the date later (or an earlier one can win),
    and the owner must read the date the platform was told, not the one first computed.
    """
    if not case or case.get("state") not in (DISRUPTION_SCHEDULED, DISRUPTED) or not case.get("account_id"):
        return case
    account = _load(ctx, "accounts", case["account_id"])
    if account and account["status"] in ("disruption_scheduled", "disrupted") and account["disrupt_at"]:
        return {**case, "disrupt_at": account["disrupt_at"]}
    return case


def resolve_recipient(policy, customer: dict | None) -> str | None:
    """The owner of record per the policy, re-checked as one single, header-safe address."""
    if customer is None or customer.get("deleted"):
        return None
    row = dict(customer)
    row["metadata"] = _as_dict(row.get("metadata"))
    address = policy.recipient_for(row)
    return address if is_single_address(address) else None


def is_single_address(address: Any) -> bool:
    """True for exactly one plain addr-spec (no display name, no CR/LF, no list)."""
    if not isinstance(address, str) or not address or address != address.strip():
        return False
    if any(ch in address for ch in "\r\n\t,;<>\"() ") or len(address) > 254:
        return False
    try:
        parsed = Address(addr_spec=address)
    except (HeaderParseError, ValueError, IndexError, TypeError):
        return False
    return bool(parsed.username and "." in parsed.domain and parsed.addr_spec == address)


# -- platform notices ---------------------------------------------------------------------
def add_notice(ctx, type: str, account_id: str, dedupe_key: str, *, case_id: str | None,
               invoice_id: str | None, customer_id: str, subscription_id: str | None,
               disrupt_at: datetime | None) -> str | None:
    """Write a platform notice with the next seq of its account; None if the dedupe_key exists.

    The body is fixed here, once: every retry POSTs these exact bytes, so the platform can
    verify the signature and dedupe on `id`. Times in the body are unix seconds, like Stripe's.
    """
    if type not in NOTICE_TYPES:
        raise UnknownNoticeType(f"unknown notice type {type!r}; expected one of {NOTICE_TYPES}")
    if _exists(ctx, "platform_notices", dedupe_key):
        return None
    seq = _next_seq(ctx, account_id, customer_id, subscription_id)
    customer = _load(ctx, "customers", customer_id) or {}
    subscription = _load(ctx, "subscriptions", subscription_id) or {}
    notice_id = new_id("ntc")
    body = dbmod.dumps({
        "id": notice_id,
        "type": type,
        "created": to_unix(ctx.now),
        "customer": customer_id,
        "subscription": subscription_id,
        "invoice": invoice_id,
        "disrupt_at": to_unix(disrupt_at),
        "metadata": {**_as_dict(customer.get("metadata")), **_as_dict(subscription.get("metadata"))},
    })
    now = utcnow()
    inserted = _insert_queued(ctx, "platform_notices", {
        "id": notice_id,
        "dedupe_key": dedupe_key,
        "type": type,
        "account_id": account_id,
        "seq": seq,
        "body": body,
    }, case_id=case_id, invoice_id=invoice_id, customer_id=customer_id, now=now)
    if not inserted:
        return None
    runtime = ctx.runtime
    ctx.after_commit(lambda: runtime.actors.deliver_notices.send(account_id))
    log.info("notice.queued", notice_id=notice_id, type=type, account_id=account_id, seq=seq,
             dedupe_key=dedupe_key)
    return notice_id


def _next_seq(ctx, account_id: str, customer_id: str, subscription_id: str | None) -> int:
    """Increment accounts.notice_seq (the UPDATE locks the row); create the account if unknown."""
    accounts = ctx.table("accounts")
    ctx.db.insert_new(ctx.conn, accounts, {
        "id": account_id, "customer_id": customer_id, "subscription_id": subscription_id,
        "status": "active", "notice_seq": 0, "updated_at": utcnow(),
    }, "id")
    seq = int(ctx.db.run(ctx.conn, _next_notice_seq(accounts), {"b_account": account_id}).one()[0])
    kept = ctx.rows.get(("accounts", account_id))
    if kept is not None:  # the copy handlers.accounts.lock_account keeps
        kept["notice_seq"] = seq
    return seq


# -- helpers ------------------------------------------------------------------------------
def _insert_queued(ctx, table_name: str, row: dict[str, Any], *, case_id: str | None, invoice_id: str | None,
                   customer_id: str | None, now: datetime, delay: timedelta = timedelta(0),
                   queued: bool = True) -> bool:
    """Insert a new outbox row, pending and never tried (worker/delivery/leased_delivery.py). Queued now: its
    message is sent after commit, so the sweeper leaves it to that message; not queued (enqueued_at
    NULL, a held account email): the sweeper sends it when next_attempt_at comes. False if its key exists."""
    return ctx.db.insert_new(ctx.conn, ctx.table(table_name), {
        **row, "case_id": case_id, "invoice_id": invoice_id, "customer_id": customer_id, "status": "pending",
        "attempts": 0, "next_attempt_at": now + delay, "enqueued_at": now if queued else None, "created_at": now,
    }, "dedupe_key")


def _check_template(ctx, template: str, extra: dict | None) -> None:
    """The template exists (a folder of templates/emails or EMAIL_TEMPLATES_DIR) and `extra` is what
    worker/delivery/email_contract.py declares for it: a mistake fails the handler's test, not a delivery."""
    from worker.delivery.email_contract import check_extra
    from worker.delivery.emails import template_names
    known = template_names(getattr(ctx.settings, "email_templates_dir", None))
    if template not in known:
        raise UnknownTemplate(f"unknown email template {template!r}; expected one of {known}")
    check_extra(template, extra)


@functools.lru_cache(maxsize=16)
def _next_notice_seq(accounts):
    return (update(accounts).where(accounts.c.id == bindparam("b_account"))
            .values(notice_seq=accounts.c.notice_seq + 1).returning(accounts.c.notice_seq))


def _exists(ctx, table_name: str, dedupe_key: str) -> bool:
    return ctx.db.run(ctx.conn, _id_by_dedupe_key(ctx.table(table_name)), {"b_key": dedupe_key}).first() is not None


@functools.lru_cache(maxsize=16)
def _id_by_dedupe_key(table):
    return select(table.c.id).where(table.c.dedupe_key == bindparam("b_key"))


def _load(ctx, table_name: str, row_id: str | None) -> dict | None:
    """The row by id; a customer, invoice or account this transaction already holds is not read again."""
    if not row_id:
        return None
    from handlers.facts import remembered
    kept = remembered(ctx, table_name, row_id)
    if kept is not None:
        return kept
    return ctx.db.row_by(ctx.conn, ctx.table(table_name), id=row_id)


def _as_dict(value: Any) -> dict:
    if isinstance(value, dict):
        return value
    if isinstance(value, str):
        try:
            parsed = dbmod.loads(value, {})
        except ValueError:
            return {}
        return parsed if isinstance(parsed, dict) else {}
    return {}
