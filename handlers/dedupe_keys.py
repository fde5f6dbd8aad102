"""Dedupe keys: one function per kind of email, notice and card retry, and nothing parses them back.

A key is what makes a second send impossible (a UNIQUE column), so its text must never change
for a kind that exists: a row written before an upgrade must block the same send after it. An
email key also carries its kind and, for a schedule step, the step's index: the outbox stores
both in their own columns (emails.kind, emails.step) and readers ask those, never the key's text.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

# Kinds of email (emails.kind): a schedule step, the steps of several invoices of one account that
# fall due together (worker/delivery/account_emails.py), or the one email a fact asks for.
STEP = "step"
ACCOUNT_STEP = "account-step"
PAYMENT_RECEIVED = "payment-received"
PAYMENT_LINK = "payment-link"
CARD_DECLINED_AGAIN = "card-declined-again"
ACTION_REQUIRED = "action-required"
CARD_EXPIRING = "card-expiring"
EMAIL_KINDS = (STEP, ACCOUNT_STEP, PAYMENT_RECEIVED, PAYMENT_LINK, CARD_DECLINED_AGAIN, ACTION_REQUIRED, CARD_EXPIRING)


@dataclass(frozen=True)
class EmailKey:
    """An email's dedupe key (`value`), its kind and, for a schedule step, the step's index."""

    value: str
    kind: str
    step: int | None = None


def step_email(case_id: str, step: int) -> EmailKey:
    """The email of schedule step `step` of a case: each step mails once per case."""
    return EmailKey(f"case:{case_id}:step:{step}", STEP, step)


def email_step(case_id: str, step: int) -> str:
    """The claim of schedule step `step` of a case (email_steps.dedupe_key): the text of the step's own
    email key, so a lone invoice's step email, written with step_email, is its claim already."""
    return step_email(case_id, step).value


def account_step_email(customer_id: str, template: str, steps: Iterable[tuple[str, int]]) -> EmailKey:
    """The one email of `template` covering the (invoice id, step index) `steps` of a customer's
    invoices: a new set of steps is a new email (its steps are the email_steps rows naming it)."""
    covered = ",".join(sorted(f"{invoice_id}@{step}" for invoice_id, step in steps))
    return EmailKey(f"account:{customer_id}:{template}:{covered}", ACCOUNT_STEP)


def payment_received(case_id: str) -> EmailKey:
    """The one "payment received" email of a recovered case."""
    return EmailKey(f"case:{case_id}:payment-received", PAYMENT_RECEIVED)


def payment_link(request_id: str, case_id: str | None = None) -> EmailKey:
    """One payment-link email per request (about the case when the invoice has one)."""
    value = f"case:{case_id}:payment-link:{request_id}" if case_id else f"payment-link:{request_id}"
    return EmailKey(value, PAYMENT_LINK)


def card_declined_again(case_id: str, payment_method_id: str, card_expiry: str | None) -> EmailKey:
    """One "declined again" email per case and card version (payment method and expiry month; the
    payment method alone for a retry recorded before expiries were kept)."""
    version = payment_method_id if card_expiry is None else f"{payment_method_id}:{card_expiry}"
    return EmailKey(f"case:{case_id}:card-declined-again:{version}", CARD_DECLINED_AGAIN)


def action_required(attempt: Any, *, case_id: str | None = None, invoice_id: str | None = None) -> EmailKey:
    """One 3-D Secure email per payment attempt, about the case when one is open, else the invoice."""
    value = (f"case:{case_id}:action-required:{attempt}" if case_id
             else f"invoice:{invoice_id}:action-required:{attempt}")
    return EmailKey(value, ACTION_REQUIRED)


def card_expiring(customer_id: str, card: dict[str, Any]) -> EmailKey:
    """One card-expiring email per card (fingerprint, else payment method id) and expiry month."""
    which = card.get("fingerprint") or card.get("payment_method_id")
    expiry = f"{int(card['exp_year']):04d}-{int(card['exp_month']):02d}"
    return EmailKey(f"card-expiring:{customer_id}:{which}:{expiry}", CARD_EXPIRING)


def notice(account_id: str, notice_type: str, discriminator: Any) -> str:
    """A platform notice: one per account, type and what it is about (a case, a disruption date...)."""
    return f"notice:{account_id}:{notice_type}:{discriminator}"


def card_retry(invoice_id: str, payment_method_id: str, card_expiry: str) -> str:
    """One immediate retry per invoice and card version: a new expiry on the same payment method is a
    new version (card_retries.dedupe_key; the expiry is also stored in card_retries.card_expiry)."""
    return f"{invoice_id}:{payment_method_id}:{card_expiry}"
