"""Email previews: every template rendered for representative cases, to look at before an owner does.

The variants cover what changes how an email reads: the currency (USD has cents, JPY has
none), whether we know the card (brand, last four, expiry), and the case before and after
its service disruption. Each is rendered by the real path (worker.delivery.email_context.build_context
then worker.delivery.emails.render), so a preview is exactly what would be sent for those rows.

Output: `<out>/<template>/<variant>.html` and `.txt`, plus `<out>/index.html` linking them all.
The failure emails (DECLINE_TEMPLATES) are also rendered once per decline group of
worker.delivery.decline_reasons (`<variant>-<code>`), since the advice and the button change with it.
Without settings (no environment), the previews use PREVIEW_SETTINGS: an example BILLING_PORTAL_URL and
brand, so the card-update button is shown as it looks once configured.

Every locale of worker.pure.locales (issue 14): English as above, at `<template>/<variant>`; each other
locale at `<template>/<locale>/<variant>`, for LOCALE_VARIANTS (one with everything known, one with
the least) and the failure emails once per LOCALE_DECLINE_CODES, in a time zone of its own
(LOCALE_ZONES), so a long German word or a line of Japanese without spaces is seen at phone width.
"""

from __future__ import annotations

import html
import itertools
import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from types import SimpleNamespace

from handlers.dunning import DISRUPTED, DISRUPTION_SCHEDULED
from worker.delivery.email_context import build_context
from worker.delivery.emails import TEMPLATES, render
from worker.pure.locales import SUPPORTED

NOW = datetime(2026, 11, 30, 9, 0, 0)
DECLINE_TEMPLATES = ("payment-failed", "reminder")
DECLINE_CODES = ("expired_card", "insufficient_funds", "do_not_honor", "lost_card", "authentication_required",
                 "processing_error")  # one per group of worker.delivery.decline_reasons
PREVIEW_SETTINGS = SimpleNamespace(
    billing_portal_url="https://billing.example.com/plans/{customer}", billing_page_url=None,
    brand_name="Example Cloud", brand_logo_url=None, brand_color="#1d4ed8",
    support_url="https://billing.example.com/help", email_from="Example Cloud <billing@example.com>",
    email_templates_dir=None)
CURRENCIES = {"usd": 4200, "jpy": 5000}
LOCALES = SUPPORTED
LOCALE_DECLINE_CODES = ("expired_card", "insufficient_funds", "authentication_required")
LOCALE_ZONES = {"en": "UTC", "de": "Europe/Berlin", "fr": "Europe/Paris", "es": "Europe/Madrid",
                "pt_BR": "America/Sao_Paulo", "ja": "Asia/Tokyo"}
LANGUAGE_NAMES = {"en": "English", "de": "German", "fr": "French", "es": "Spanish", "pt_BR": "Portuguese (Brazil)",
                  "ja": "Japanese"}


@dataclass(frozen=True)
class Variant:
    currency: str
    with_card: bool
    disrupted: bool

    @property
    def name(self) -> str:
        return (f"{self.currency}-{'card' if self.with_card else 'no-card'}-"
                f"{'after-disruption' if self.disrupted else 'before-disruption'}")

    @property
    def label(self) -> str:
        return (f"{self.currency.upper()}, {'card known' if self.with_card else 'no card details'}, "
                f"{'after' if self.disrupted else 'before'} disruption")


VARIANTS = tuple(Variant(c, card, disrupted) for c, card, disrupted in
                 itertools.product(CURRENCIES, (True, False), (False, True)))
LOCALE_VARIANTS = (VARIANTS[0], VARIANTS[-1])  # USD, card known, before; JPY, no card, after


def rows_for(variant: Variant) -> dict:
    """The case, invoice, customer and card rows a real case of this kind would have."""
    amount = CURRENCIES[variant.currency]
    first_failed = NOW - timedelta(days=15 if variant.disrupted else 8)
    invoice_id = f"in_preview_{variant.currency}"
    case = {
        "id": f"dc_preview_{variant.currency}", "invoice_id": invoice_id, "customer_id": "cus_preview",
        "subscription_id": "sub_preview", "account_id": "sub_preview",
        "state": DISRUPTED if variant.disrupted else DISRUPTION_SCHEDULED, "schedule": "default",
        "currency": variant.currency, "amount_due": amount, "first_failed_at": first_failed,
        "attempt_count": 4 if variant.disrupted else 3,
        "next_payment_attempt": None if variant.disrupted else NOW + timedelta(days=2),
        "last_failure_code": "card_declined", "last_failure_message": "Your card has insufficient funds.",
        "card_brand": "visa" if variant.with_card else None, "card_last4": "4242" if variant.with_card else None,
        "disrupt_at": first_failed + timedelta(days=14), "opened_at": first_failed,
        "recovered_amount": amount,
    }
    invoice = {
        "id": invoice_id, "customer_id": "cus_preview", "subscription_id": "sub_preview",
        "number": f"PREVIEW-{variant.currency.upper()}-0001", "status": "open", "currency": variant.currency,
        "amount_due": amount, "amount_remaining": amount,
        "hosted_invoice_url": f"https://invoice.stripe.com/i/acct_preview/{invoice_id}",
        "invoice_pdf": f"https://pay.stripe.com/invoice/acct_preview/{invoice_id}/pdf",
    }
    customer = {"id": "cus_preview", "email": "owner@example.com", "name": "Ada Lovelace", "metadata": {}}
    card = ({"brand": "visa", "last4": "4242", "exp_month": 12, "exp_year": 2026, "is_default": True}
            if variant.with_card else None)
    return {"case": case, "invoice": invoice, "customer": customer, "card": card}


def extra_for(template: str, variant: Variant) -> dict:
    """What the code that sends this template adds to the context (declared in worker/delivery/email_contract.py)."""
    if template == "payment-link":
        return {"payment_link": {"url": "https://buy.stripe.com/test_preview_link",
                                 "expires_at": NOW + timedelta(hours=72),
                                 "amount": CURRENCIES[variant.currency], "currency": variant.currency}}
    if template == "card-declined-again":
        return {"decline": {"code": "card_declined", "decline_code": "do_not_honor",
                            "message": "Your card was declined."}}
    if template == "payment-received":  # paid after the disruption: service restored
        return {"service_disrupted": variant.disrupted, "service_restored": variant.disrupted}
    if template == "action-required":
        return {"action_url": "https://invoice.stripe.com/i/acct_preview/confirm"}
    if template == "card-expiring":
        return {"card": {"brand": "visa", "last4": "4242", "exp_month": 12, "exp_year": 2026}}
    return {}


def render_variant(template: str, variant: Variant, settings=None, decline_code: str | None = None,
                   locale: str = "en"):
    rows = rows_for(variant)
    if decline_code:
        rows["case"]["last_failure_code"] = decline_code
    settings = settings if settings is not None else PREVIEW_SETTINGS
    context = build_context(case=rows["case"], invoice=rows["invoice"], customer=rows["customer"],
                            card=rows["card"], extra=extra_for(template, variant), settings=settings,
                            locale=locale, tz=LOCALE_ZONES.get(locale))
    return render(template, context, getattr(settings, "email_templates_dir", None))


def _renderings(template: str):
    """(file name, label, variant, decline code, locale) of every preview of one template."""
    for variant in VARIANTS:
        yield variant.name, variant.label, variant, None, "en"
    if template in DECLINE_TEMPLATES:
        variant = VARIANTS[0]
        for code in DECLINE_CODES:
            yield f"{variant.name}-{code}", f"{variant.label}, declined: {code}", variant, code, "en"
    for locale in LOCALES:
        if locale == "en":
            continue
        language = LANGUAGE_NAMES.get(locale, locale)
        for variant in LOCALE_VARIANTS:
            yield f"{locale}/{variant.name}", f"{language}: {variant.label}", variant, None, locale
        if template in DECLINE_TEMPLATES:
            for code in LOCALE_DECLINE_CODES:
                yield (f"{locale}/{VARIANTS[0].name}-{code}", f"{language}: {VARIANTS[0].label}, declined: {code}",
                       VARIANTS[0], code, locale)


def preview_count() -> int:
    """How many emails write_previews renders (every template's renderings)."""
    return sum(1 for template in TEMPLATES for _ in _renderings(template))


def write_previews(out: Path, settings=None, templates=TEMPLATES) -> list[dict]:
    """Render every template x variant into `out` (replacing earlier previews); return the index."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for template in templates:
        folder = out / template
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for name, label, variant, code, locale in _renderings(template):
            email = render_variant(template, variant, settings, code, locale)
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / f"{name}.html").write_text(email.html, encoding="utf-8")
            (folder / f"{name}.txt").write_text(f"Subject: {email.subject}\n\n{email.text}", encoding="utf-8")
            written.append({"template": template, "variant": name, "label": label, "locale": locale,
                            "subject": email.subject, "html": f"{template}/{name}.html",
                            "text": f"{template}/{name}.txt"})
    (out / "index.html").write_text(index_html(written), encoding="utf-8")
    return written


def index_html(written: list[dict]) -> str:
    """One page linking every preview, grouped by template (readable on a phone too)."""
    sections = []
    for template, items in itertools.groupby(written, key=lambda w: w["template"]):
        entries = "\n".join(
            f'<li><a href="{html.escape(i["html"])}">{html.escape(i["label"])}</a> '
            f'(<a href="{html.escape(i["text"])}">text</a>)<br><small>{html.escape(i["subject"])}</small></li>'
            for i in items)
        sections.append(f"<section><h2>{html.escape(template)}</h2>\n<ul>\n{entries}\n</ul></section>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            "<title>Email previews</title>\n"
            "<style>body{font-family:system-ui,sans-serif;margin:1rem;max-width:60rem;overflow-wrap:anywhere}"
            "li{margin:.4rem 0}small{color:#555}</style></head><body>\n"
            f"<h1>Email previews</h1>\n<p>{len(written)} emails: every template for each representative case.</p>\n"
            + "\n".join(sections) + "\n</body></html>\n")
