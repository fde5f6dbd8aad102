"""The email contract, declared once: the variables each template reads and the `extra` its sender passes.

Every email is rendered from one context (worker.delivery.email_context.build_context: every key of KEYS,
None when unknown, plus RENDERED: `subject`, `template` and `html_lang` added by
worker.delivery.emails.render). Some facts only the sender knows (the card that is expiring, a payment link,
the account's other unpaid invoices): it passes them as `extra`, whose shape per template is a
TypedDict below (`EXTRAS`); the outbox refuses any other key, so a misspelt key fails the handler's
test instead of rendering a blank.

`VARIABLES` lists exactly what each template reads, its own files and the shared layout
(_base, _macros) it extends and imports. tests/unit/test_email_contract.py parses every template and
fails when a template reads a variable its declaration lacks or the declaration names one the
template does not read, or names one the context never holds. A template folder without a
declaration (an email-only step an operator adds) may read any key of the context.
"""

from __future__ import annotations

import functools
from typing import Any, TypedDict, get_type_hints, is_typeddict

from jinja2 import Environment, meta, nodes

from worker.delivery.email_context import KEYS

RENDERED = frozenset({"subject", "template", "html_lang"})  # added by worker.delivery.emails.render itself
CONTEXT = frozenset(KEYS) | RENDERED
PARTS = ("subject.txt", "body.txt", "body.html")

# What _base.* and _macros.* read: every email shows the amount, the card, the links and the brand,
# in the owner's language (`locale`, and `html_lang` for <html lang>: issue 14).
LAYOUT = frozenset({
    "amount", "brand_color", "brand_logo_url", "brand_name", "card_description", "card_update_path",
    "card_update_steps", "decline_advice", "decline_reason", "disrupt_at", "failure_message",
    "hosted_invoice_url", "html_lang", "invoice_number", "invoice_paid", "invoice_pdf", "locale",
    "next_payment_attempt", "owner_name", "pay_first", "payment_link_hint", "portal_url", "subject",
    "support_url",
})
# What _invoices.* reads: a schedule step's email lists every unpaid invoice of the account and the
# total per currency (worker/delivery/account_emails.py, issue 14).
ACCOUNT_LISTING = frozenset({"invoices", "invoice_totals"})

VARIABLES: dict[str, frozenset[str]] = {
    "payment-failed": LAYOUT | ACCOUNT_LISTING | {"card_exp", "card_expired"},
    "reminder": LAYOUT | ACCOUNT_LISTING | {"decline_group"},
    "disruption-warning": LAYOUT | ACCOUNT_LISTING,
    "final-notice": LAYOUT | ACCOUNT_LISTING,
    "service-disrupted": LAYOUT | ACCOUNT_LISTING,
    "service-restored": LAYOUT | {"amount_paid"},
    "payment-received": LAYOUT | {"amount_paid", "service_disrupted", "service_restored"},
    "payment-link": LAYOUT | {"payment_link_expires_at", "payment_link_is_invoice_page", "payment_link_methods",
                              "payment_link_url", "service_disrupted"},
    "card-declined-again": LAYOUT,
    "action-required": LAYOUT | {"action_url"},
    "card-expiring": LAYOUT | {"card_exp"},
}


# -- the `extra` each sender passes ---------------------------------------------------------
class Card(TypedDict, total=False):
    """A card as the sender knows it -> card_brand, card_last4, card_exp, card_description."""

    brand: str | None
    last4: str | None
    exp_month: int | None
    exp_year: int | None
    funding: str | None


class Decline(TypedDict, total=False):
    """Stripe's answer to a charge -> failure_message, decline_group/reason/advice."""

    code: str | None
    decline_code: str | None
    message: str | None


class PaymentLink(TypedDict, total=False):
    """The link made on request -> payment_link_url, payment_link_expires_at, amount."""

    url: str
    expires_at: Any        # naive UTC datetime: shown with the hour
    amount: int            # minor units
    currency: str


class ListedInvoice(TypedDict):
    """One unpaid invoice of the account (worker/delivery/account_emails.py ListedInvoice, as a dict)."""

    invoice_id: str
    number: str
    amount: str            # formatted: "$49.00 USD"
    url: str | None        # the hosted invoice page (checked by email_context.safe_url)


class StepExtra(TypedDict, total=False):
    """worker/delivery/account_emails.py: a step email of an account with more than one unpaid invoice lists
    them all with the total owed per currency (a lone invoice's email passes nothing)."""

    invoices: list[ListedInvoice]
    invoice_totals: list[str]  # one per currency: "USD 169.00"


class PaymentReceivedExtra(TypedDict):
    """handlers/invoices.py: what happened to the service when the invoice was paid."""

    service_disrupted: bool
    service_restored: bool


class PaymentLinkExtra(TypedDict, total=False):
    """worker/stripe/payment_links.py: the link, and the methods its page offers (readable and Stripe's)."""

    payment_link: PaymentLink
    payment_link_methods: list[str]        # e.g. ["Card", "ACH Direct Debit (US bank account)"]
    payment_link_method_types: list[str]   # e.g. ["card", "us_bank_account"]


class CardDeclinedAgainExtra(TypedDict, total=False):
    """worker/stripe/card_retries.py: the new card that was declined, and why."""

    card: Card
    decline: Decline


class ActionRequiredExtra(TypedDict):
    """handlers/actions.py: where the owner confirms the payment (3-D Secure)."""

    action_url: str


class CardExpiringExtra(TypedDict):
    """handlers/cards.py and worker/scheduling/card_expiry.py: the card that is about to expire."""

    card: Card


# Templates not named here take no extra: everything they show comes from our rows. A folder with no
# declaration (an email-only step an operator adds) takes a step's extra: any step may list the account.
STEP_TEMPLATES = ("payment-failed", "reminder", "disruption-warning", "final-notice", "service-disrupted")
EXTRAS: dict[str, type] = {
    **{template: StepExtra for template in STEP_TEMPLATES},
    "payment-received": PaymentReceivedExtra,
    "payment-link": PaymentLinkExtra,
    "card-declined-again": CardDeclinedAgainExtra,
    "action-required": ActionRequiredExtra,
    "card-expiring": CardExpiringExtra,
}


class ContractError(ValueError):
    """Raised when a sender's `extra` or a template's variables break this contract."""


def declared_variables(template: str) -> frozenset[str]:
    """What `template` may read: its declaration, or the whole context for an undeclared folder."""
    return VARIABLES.get(template, CONTEXT)


def check_extra(template: str, extra: dict | None) -> None:
    """`extra` has the keys EXTRAS declares for `template` (nested shapes too), required ones present."""
    shape = EXTRAS.get(template, None if template in VARIABLES else StepExtra)
    _check_shape(shape, extra or {}, f"extra of {template}")


def _check_shape(shape: type | None, value: dict, where: str) -> None:
    if shape is None:
        if value:
            raise ContractError(f"{where} must be empty, got {sorted(value)}")
        return
    hints = _hints(shape)
    unknown = sorted(set(value) - set(hints))
    if unknown:
        raise ContractError(f"{where}: unknown key {unknown[0]!r} (declared: {', '.join(hints)})")
    missing = sorted(set(shape.__required_keys__) - set(value))
    if missing:
        raise ContractError(f"{where}: missing key {missing[0]!r}")
    for key, hint in hints.items():
        if is_typeddict(hint) and isinstance(value.get(key), dict):
            _check_shape(hint, value[key], f"{where}.{key}")


@functools.lru_cache(maxsize=64)
def _hints(shape: type) -> dict[str, Any]:
    """The declared keys of a TypedDict and their types, resolved once (checked for every email)."""
    return get_type_hints(shape)


def template_variables(env: Environment, template: str) -> frozenset[str]:
    """Every variable `template` reads from its context: its three parts and all they extend,
    include or import (macro aliases aside), found by parsing, not by rendering."""
    found: set[str] = set()
    seen: set[str] = set()
    for part in PARTS:
        found |= _variables_of(env, f"{template}/{part}", seen)
    return frozenset(found)


def _variables_of(env: Environment, name: str, seen: set[str]) -> set[str]:
    if name in seen:
        return set()
    seen.add(name)
    source, _filename, _uptodate = env.loader.get_source(env, name)
    tree = env.parse(source)
    aliases = {node.target for node in tree.find_all(nodes.Import)}
    # Not context: the environment's globals (gettext's `_`...) and Jinja's own names (`_trans`, which
    # the i18n extension's {% trans %} blocks leave behind); no context key starts with "_".
    found = {name for name in meta.find_undeclared_variables(tree) - aliases - set(env.globals)
             if not name.startswith("_")}
    for referenced in meta.find_referenced_templates(tree):
        if referenced is None:
            raise ContractError(f"{name} names a template by a variable: its variables cannot be checked")
        found |= _variables_of(env, referenced, seen)
    return found


def check_template(env: Environment, template: str) -> None:
    """The template reads exactly what it declares (all of it held by the context)."""
    reads, declared = template_variables(env, template), declared_variables(template)
    undeclared = sorted(reads - declared)
    if undeclared:
        raise ContractError(f"template {template} reads {', '.join(undeclared)}, not declared for it "
                            "(worker/delivery/email_contract.py)")
    if template in VARIABLES:
        unread = sorted(declared - reads)
        if unread:
            raise ContractError(f"template {template} is declared to read {', '.join(unread)} but does not")
    absent = sorted(declared - CONTEXT)
    if absent:
        raise ContractError(f"template {template} is declared to read {', '.join(absent)}, "
                            "which the email context never holds")
