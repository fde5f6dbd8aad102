"""The facts an email shows, gathered from our rows into one flat template context.

Every key a template may use is always present (None when unknown) so templates run under
StrictUndefined and can say `{% if card_last4 %}` without guessing. Values are plain strings,
already formatted (amounts with the currency's exponent, dates in words): templates decide
what to say, not how to format money.

Sources, by precedence: `extra` (what the caller knows best: a payment link, the card that
is expiring) > the case (the card that failed, the disruption date, Stripe's next retry) >
the invoice > the customer's latest recorded card.

`extra` of each template: worker/delivery/email_contract.py EXTRAS (the outbox refuses any other key). The
nested shapes are flattened here: card -> card_*, decline -> failure_message and the decline's
advice, payment_link -> payment_link_* and amount; other keys are shown as is (URLs checked).
Datetimes in extra are formatted (…_expires_at with the hour, in UTC).

Language (issue 14): `locale` (worker.delivery.email_locale: "en", "de", "pt_BR" ...) sets the words this
module writes (the card's description, the decline's reason and advice, the dashboard path) from the
gettext catalogue, and the money and date formats from Babel (CLDR) for that locale.
"""

from __future__ import annotations

import functools
import re
from datetime import date, datetime
from email.utils import parseaddr
from typing import Any

from urllib.parse import quote, urlsplit

import structlog
from babel.dates import format_date, format_datetime
from sqlalchemy import Connection, Table, bindparam, select

from handlers.dunning import DISRUPTED, RECOVERED
from worker.delivery.email_locale import N_, babel_locale, gettext
from worker.delivery.emails import one_line
from worker.infra.driver_sql import run
from worker.pure.locales import DEFAULT_LOCALE, normalize
from worker.pure.money import format_amount_with_code


log = structlog.get_logger("worker.delivery.email_context")
# Links an email may carry: Stripe's own pages over https (hosted invoice and PDF, payment links,
# checkout, 3-D Secure, the customer portal) and the configured BILLING_PAGE_URL. An invoice's
# hosted_invoice_url comes from the event body, so anything else is dropped (and logged).
STRIPE_LINK_HOSTS = frozenset({"invoice.stripe.com", "pay.stripe.com", "buy.stripe.com",
                               "checkout.stripe.com", "hooks.stripe.com", "billing.stripe.com"})
# The platform's menu names, as its dashboard shows them in each language (translated like any text).
CARD_UPDATE_STEPS = (N_("Applications"), N_("Plans & Billings"), N_("Payment Method"), N_("Edit"))
CARD_UPDATE_PATH = " -> ".join(CARD_UPDATE_STEPS)
PAYMENT_LINK_HINT = N_("reply to this email and ask our support team for a secure payment link")
NAME_MAX = 80
MESSAGE_MAX = 300

BRANDS = {
    "visa": "Visa", "mastercard": "Mastercard", "amex": "American Express",
    "american express": "American Express", "discover": "Discover", "diners": "Diners Club",
    "diners club": "Diners Club", "jcb": "JCB", "unionpay": "UnionPay", "cartes_bancaires":
    "Cartes Bancaires", "eftpos_au": "eftpos", "interac": "Interac", "link": "Link",
}

# Keys every template may rely on (None when unknown); extra may add more.
KEYS = (
    "owner_name", "customer_id", "invoice_id", "invoice_number", "amount", "amount_paid",
    "currency", "card_brand", "card_last4", "card_description", "card_exp", "failure_message",
    "attempt_count", "next_payment_attempt", "disrupt_at", "case_state", "service_disrupted", "service_restored",
    "hosted_invoice_url", "invoice_pdf", "payment_link_url", "payment_link_expires_at",
    "payment_link_methods", "action_url", "card_update_path", "card_update_steps", "payment_link_hint", "sender_name",
    # issue 14: the card-update button, the decline's group and advice, branding
    "portal_url", "invoice_paid", "payment_link_is_invoice_page", "card_expired", "decline_group", "decline_reason", "decline_advice", "pay_first",
    "brand_name", "brand_logo_url", "brand_color", "support_url",
    # issue 14, one email per account and step: every unpaid invoice and the total owed per currency
    # (worker/delivery/account_emails.py ListedInvoice; the step templates include _invoices.*)
    "invoices", "invoice_totals",
    "locale",  # the email's language (worker.delivery.email_locale), fixed when it is rendered
)


def latest_card(conn: Connection, cards: Table, customer_id: str | None) -> dict | None:
    """The customer's latest recorded default card, else the latest card of any kind."""
    if not customer_id:
        return None
    row = run(conn, _latest_card(cards), {"b_customer": customer_id}).mappings().first()
    return dict(row) if row else None


@functools.lru_cache(maxsize=16)
def _latest_card(cards: Table):
    """`latest_card`'s statement, built once (a bound parameter)."""
    return (select(cards).where(cards.c.customer_id == bindparam("b_customer"))
            .order_by(cards.c.is_default.desc(), cards.c.recorded_at.desc(), cards.c.id.desc()).limit(1))


def build_context(*, case: dict | None = None, invoice: dict | None = None,
                  customer: dict | None = None, card: dict | None = None,
                  extra: dict | None = None, settings: Any = None,
                  locale: str = DEFAULT_LOCALE, tz: str | None = None) -> dict[str, Any]:
    """A complete, formatted context for any template (see KEYS).

    tz: the owner's IANA zone (worker.pure.email_time.owner_timezone); deadlines are stated as date,
    time and zone in it (UTC when None). locale: the owner's language (worker.pure.locales.owner_locale)."""
    lang = normalize(locale) or DEFAULT_LOCALE
    locale = babel_locale(lang)
    case, invoice, customer, card, extra = case or {}, invoice or {}, customer or {}, card or {}, extra or {}

    currency = case.get("currency") or invoice.get("currency")
    owed = _first_positive(invoice.get("amount_remaining") if invoice.get("status") == "open" else None,
                           case.get("amount_due"), invoice.get("amount_due"))
    paid = _first_positive(case.get("recovered_amount"), case.get("amount_due"), invoice.get("amount_due"))

    brand = case.get("card_brand") or card.get("brand")
    last4 = case.get("card_last4") or card.get("last4")
    if case.get("card_last4") and case.get("card_exp_month") and case.get("card_exp_year"):
        exp_month, exp_year = case["card_exp_month"], case["card_exp_year"]  # read from the failed payment
    elif case.get("card_last4") and card.get("last4") != case.get("card_last4"):
        exp_month, exp_year = None, None  # the failed card is not the recorded one
    else:
        exp_month, exp_year = card.get("exp_month"), card.get("exp_year")

    context: dict[str, Any] = {key: None for key in KEYS}
    context.update({
        "owner_name": _name(customer.get("name")),
        "customer_id": customer.get("id") or case.get("customer_id") or invoice.get("customer_id"),
        "invoice_id": invoice.get("id") or case.get("invoice_id"),
        "invoice_number": _clip(one_line(invoice.get("number") or invoice.get("id") or case.get("invoice_id")
                                         or ""), 100),
        "amount": format_amount_with_code(owed, currency, locale) or None,
        "amount_paid": format_amount_with_code(paid, currency, locale) or None,
        "currency": currency.upper() if currency else None,
        "failure_message": _clip(case.get("last_failure_message"), MESSAGE_MAX),
        "attempt_count": case.get("attempt_count") or None,
        "next_payment_attempt": format_deadline(case.get("next_payment_attempt"), tz, lang),
        "disrupt_at": format_deadline(case.get("disrupt_at"), tz, lang),
        "case_state": case.get("state"),
        "service_disrupted": case.get("state") == DISRUPTED,
        "hosted_invoice_url": safe_url(invoice.get("hosted_invoice_url"), settings),
        "invoice_pdf": safe_url(invoice.get("invoice_pdf"), settings),
        "card_update_steps": tuple(gettext(lang, step) for step in CARD_UPDATE_STEPS),
        "payment_link_hint": gettext(lang, PAYMENT_LINK_HINT),
        "sender_name": _sender_name(settings),
        "locale": lang,
    })
    context["card_update_path"] = " -> ".join(context["card_update_steps"])
    _set_card(context, brand, last4, exp_month, exp_year)
    _set_decline(context, case.get("last_failure_code"))
    _set_brand(context, settings, case, invoice, customer)

    if isinstance(extra.get("decline"), dict):
        _set_decline(context, extra["decline"].get("decline_code"), extra["decline"].get("code"))
    extra = _flatten_extra(extra)
    for key, value in extra.items():
        context[key] = _format_extra(key, value, lang)
    if any(k in extra for k in ("card_brand", "card_last4", "card_exp_month", "card_exp_year")):
        _set_card(context, extra.get("card_brand", brand), extra.get("card_last4", last4),
                  extra.get("card_exp_month", exp_month), extra.get("card_exp_year", exp_year))
    if extra.get("payment_link_amount") is not None:
        context["amount"] = format_amount_with_code(
            extra["payment_link_amount"], extra.get("payment_link_currency") or currency, locale) or context["amount"]
    context["action_url"] = safe_url(context.get("action_url"), settings) or context["hosted_invoice_url"]
    context["payment_link_url"] = safe_url(context.get("payment_link_url"), settings)
    # The invoice's hosted page does not expire when our payment_links row says (issue 14): say only what is true.
    context["payment_link_is_invoice_page"] = _host_of(context["payment_link_url"] or "") == "invoice.stripe.com"
    if context["payment_link_is_invoice_page"]:
        context["payment_link_expires_at"] = None
    return context


def _set_decline(context: dict, *codes: Any) -> None:
    """The decline's group (worker.delivery.decline_reasons) and the reason and advice an owner reads."""
    from worker.delivery.decline_reasons import AUTHENTICATION_REQUIRED, advice_for, group_of
    group = group_of(*codes)
    if group is None:
        return
    context["decline_group"] = group
    context["card_expired"] = any(isinstance(c, str) and c.strip().lower() == "expired_card" for c in codes)
    reason, advice = advice_for(group)
    context["decline_reason"] = gettext(context.get("locale"), reason) if reason else None
    context["decline_advice"] = gettext(context.get("locale"), advice) if advice else None
    # 3-D Secure: confirming on the invoice page is the fix, a new card is not.
    context["pay_first"] = group == AUTHENTICATION_REQUIRED


def _set_brand(context: dict, settings: Any, case: dict, invoice: dict, customer: dict) -> None:
    """BRAND_* and SUPPORT_URL, and the card-update page (BILLING_PORTAL_URL, placeholders filled)."""
    context["brand_name"] = _clip(one_line(getattr(settings, "brand_name", None) or ""), NAME_MAX) \
        or context["sender_name"]
    context["brand_logo_url"] = getattr(settings, "brand_logo_url", None)
    context["brand_color"] = getattr(settings, "brand_color", None) or "#1d4ed8"
    context["support_url"] = getattr(settings, "support_url", None)
    context["invoice_paid"] = invoice.get("status") == "paid" or case.get("state") == RECOVERED
    portal = getattr(settings, "billing_portal_url", None)
    if not portal:
        return
    values = {"customer": context["customer_id"],
              "subscription": case.get("subscription_id") or invoice.get("subscription_id")}
    for name, value in values.items():
        if "{" + name + "}" in portal:
            if not value:
                return  # a portal page for an unknown account would be a wrong link: the path text instead
            portal = portal.replace("{" + name + "}", quote(str(value), safe=""))
    context["portal_url"] = safe_url(portal, settings)


def _flatten_extra(extra: dict) -> dict:
    """Accept the nested shapes callers pass and map them onto flat template keys.

    {"card": {brand, last4, exp_month, exp_year}} -> card_*; {"decline": {code, decline_code,
    message}} -> failure_message; {"payment_link": {url, expires_at, amount, currency}} (or top-level
    "url"/"expires_at") -> payment_link_*. Flat keys given explicitly win.
    """
    flat = {k: v for k, v in extra.items() if k not in ("card", "decline", "payment_link")}
    card = extra.get("card")
    if isinstance(card, dict):
        for key in ("brand", "last4", "exp_month", "exp_year"):
            if card.get(key) is not None:
                flat.setdefault(f"card_{key}", card[key])
    decline = extra.get("decline")
    if isinstance(decline, dict):
        message = decline.get("message") or decline.get("decline_code") or decline.get("code")
        if message:
            flat.setdefault("failure_message", message)
    link = extra.get("payment_link")
    link = dict(link) if isinstance(link, dict) else {}
    for key in ("url", "expires_at"):
        if key in extra and f"payment_link_{key}" not in flat:
            link.setdefault(key, extra[key])
    for key in ("url", "expires_at", "amount", "currency"):
        if link.get(key) is not None:
            flat.setdefault(f"payment_link_{key}", link[key])
    return flat


def _set_card(context: dict, brand: Any, last4: Any, exp_month: Any, exp_year: Any) -> None:
    brand_name = brand_display(brand)
    last4 = str(last4)[-4:] if last4 and str(last4)[-4:].isdigit() else None
    context["card_brand"] = brand_name
    context["card_last4"] = last4
    lang = context.get("locale")
    if brand_name and last4:
        context["card_description"] = gettext(lang, N_("%(brand)s ending in %(last4)s"), brand=brand_name,
                                              last4=last4)
    elif last4:
        context["card_description"] = gettext(lang, N_("card ending in %(last4)s"), last4=last4)
    elif brand_name:
        context["card_description"] = gettext(lang, N_("%(brand)s card"), brand=brand_name)
    else:
        context["card_description"] = None
    try:
        context["card_exp"] = f"{int(exp_month):02d}/{int(exp_year)}" if exp_month and exp_year else None
    except (TypeError, ValueError):
        context["card_exp"] = None


def brand_display(brand: Any) -> str | None:
    """'visa' -> 'Visa', 'amex' -> 'American Express'; unknown brands title-cased, one line."""
    if not brand or not isinstance(brand, str):
        return None
    key = brand.strip().lower()
    if key in ("unknown", ""):
        return None
    return BRANDS.get(key) or _clip(one_line(key.replace("_", " ").title()), 30)


def _as_moment(value: Any) -> Any:
    """A date field as given to a template (unix seconds, ISO text, datetime or date) read as a
    datetime or date; unparsable text comes back as the text to show, clipped."""
    if isinstance(value, (int, float)):
        from worker.pure.clock import from_unix
        return from_unix(value)
    if isinstance(value, str):
        from worker.pure.clock import parse_instant
        try:
            return parse_instant(value)
        except ValueError:
            return _clip(one_line(value), 40)
    return value


def format_day(value: Any, locale: str = DEFAULT_LOCALE) -> str | None:
    """'December 1, 2026' ('1. Dezember 2026') for a datetime or date (UTC); None when unknown."""
    if value is None or value == "":
        return None
    locale = babel_locale(locale)
    value = _as_moment(value)
    if isinstance(value, str):
        return value
    if isinstance(value, datetime):
        return format_date(value.date(), format="long", locale=locale)
    if isinstance(value, date):
        return format_date(value, format="long", locale=locale)
    return None


def format_deadline(value: Any, tz: str | None = None, locale: str = DEFAULT_LOCALE) -> str | None:
    """'December 16, 2026 at 09:00 PST': the date, the time and the zone of a deadline in the owner's
    zone (issue 14); a bare date when only a date is known. Other locales say it their way
    ('16. Dezember 2026 um 09:00 MEZ', '2026年12月16日 09:00 JST'), always with the zone."""
    if value is None or value == "":
        return None
    value = _as_moment(value)
    if isinstance(value, str):
        return value
    if not isinstance(value, datetime):
        return format_day(value, locale)
    from worker.pure.email_time import as_zone
    local = as_zone(value, tz)
    return _date_time_zone(local, format_datetime(local, format="HH:mm", tzinfo=local.tzinfo,
                                                  locale=babel_locale(locale)), locale)


def _date_time_zone(local: datetime, time: str, locale: str) -> str:
    """The locale's sentence for a date, a time and a zone (the zone is never left out)."""
    lang = normalize(locale) or DEFAULT_LOCALE
    return gettext(lang, N_("%(date)s at %(time)s %(zone)s"),
                   date=format_date(local.date(), format="long", locale=babel_locale(lang)),
                   time=time, zone=_zone_name(local, lang))


def _zone_name(local: datetime, lang: str) -> str:
    """tzdata's abbreviation (PST, CET, JST, UTC) in English; elsewhere CLDR's short name when the
    locale has one (MEZ in German), else tzdata's abbreviation, never a bare offset."""
    fallback = local.tzname() or "UTC"
    if lang == DEFAULT_LOCALE:
        return fallback
    try:
        short = format_datetime(local, format="z", tzinfo=local.tzinfo, locale=babel_locale(lang))
    except (LookupError, ValueError):
        return fallback
    return short if short and short.isalpha() else fallback


def format_moment(value: datetime | None, locale: str = DEFAULT_LOCALE) -> str | None:
    """'December 1, 2026 at 2:00 PM UTC': for expiries, where the hour matters (in UTC)."""
    if value is None:
        return None
    lang = normalize(locale) or DEFAULT_LOCALE
    from worker.pure.email_time import as_zone
    local = as_zone(value, "UTC")
    time_format = "h:mm a" if lang == DEFAULT_LOCALE else "HH:mm"
    return _date_time_zone(local, format_datetime(local, format=time_format, tzinfo=local.tzinfo,
                                                  locale=babel_locale(lang)), lang)


_WHITESPACE = re.compile(r"\s")  # in a str pattern: what str.isspace() calls whitespace, Unicode's too


def safe_url(value: Any, settings: Any = None) -> str | None:
    """Only https links to Stripe's own hosts (STRIPE_LINK_HOSTS) or under BILLING_PAGE_URL, without
    whitespace or credentials, reach a template; anything else is dropped and logged."""
    if not isinstance(value, str) or not value.strip():
        return None
    value = value.strip()
    if _WHITESPACE.search(value) or len(value) > 2000 or not _allowed_link(value, settings):
        try:
            log.warning("email.link_dropped", host=_host_of(value))
        except (ValueError, OSError):  # a closed log stream must never stop an email
            pass
        return None
    return value


def _host_of(url: str) -> str | None:
    try:
        return (urlsplit(url).hostname or "")[:100] or None
    except ValueError:
        return None


def _allowed_link(url: str, settings: Any) -> bool:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    if parts.scheme != "https" or parts.username or parts.password or port not in (None, 443):
        return False
    host = (parts.hostname or "").lower()
    if host in STRIPE_LINK_HOSTS:
        return True
    # The operator's own pages: BILLING_PAGE_URL, BILLING_PORTAL_URL (up to its first placeholder),
    # SUPPORT_URL and BRAND_LOGO_URL, each only under its own host and path.
    for name in ("billing_page_url", "billing_portal_url", "support_url", "brand_logo_url"):
        configured = getattr(settings, name, None)
        if not configured:
            continue
        base = urlsplit(configured.split("{", 1)[0])
        prefix = base.path or "/"
        if name == "brand_logo_url":
            prefix = base.path  # the image itself only
            if host == (base.hostname or "").lower() and parts.path == prefix:
                return True
            continue
        if host == (base.hostname or "").lower() and parts.path.startswith(prefix):
            return True
    return False


def _format_extra(key: str, value: Any, locale: str) -> Any:
    if isinstance(value, datetime):
        return format_moment(value, locale) if key.endswith("expires_at") else format_day(value, locale)
    if isinstance(value, date):
        return format_day(value, locale)
    if isinstance(value, str) and key.endswith("_at"):
        from worker.pure.clock import parse_instant
        try:
            moment = parse_instant(value)
        except ValueError:
            return _clip(one_line(value), 60)
        return format_moment(moment, locale) if key.endswith("expires_at") else format_day(moment, locale)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and key.endswith("_at"):
        from worker.pure.clock import from_unix
        return _format_extra(key, from_unix(value), locale)
    if isinstance(value, str) and key.endswith(("message", "name", "note")):
        return _clip(value, MESSAGE_MAX)
    return value


def _name(value: Any) -> str | None:
    """The owner's name for a greeting: one line, bounded; None when there is none."""
    if not isinstance(value, str):
        return None
    name = _clip(one_line(value), NAME_MAX)
    return name or None


def _sender_name(settings: Any) -> str | None:
    return None if settings is None else _display_name(getattr(settings, "email_from", "") or "")


@functools.lru_cache(maxsize=8)
def _display_name(email_from: str) -> str | None:
    """The name of EMAIL_FROM, parsed once per value (some 60 calls of the standard library a parse)."""
    name, _address = parseaddr(email_from)
    return _clip(one_line(name), NAME_MAX) or None


def _clip(value: Any, limit: int) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    if not text:
        return None
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _first_positive(*values: Any) -> int | None:
    for value in values:
        if isinstance(value, int) and value > 0:
            return value
    return None
