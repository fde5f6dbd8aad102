"""Readers for Stripe payloads across API versions: ids or expanded objects, old and new shapes.

Stripe moves fields between versions; every handler reads through these helpers so the quirks
are handled once. Examples: the subscription of an invoice is
`parent.subscription_details.subscription` from 2025 (basil) on and `subscription` before; a
customer is an id or an expanded object; the payment intent moved under `payments` in 2025.
"""

from __future__ import annotations

from typing import Any


def expandable_id(value: Any) -> str | None:
    """An id whether Stripe sent the id or the expanded object."""
    if value is None:
        return None
    if isinstance(value, str):
        return value or None
    if isinstance(value, dict):
        found = value.get("id")
        return found if isinstance(found, str) and found else None
    return None


def dig(obj: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def metadata_of(obj: Any) -> dict[str, str]:
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    if not isinstance(meta, dict):
        return {}
    return {str(k): str(v) for k, v in meta.items() if v is not None}


def invoice_subscription_id(invoice: dict) -> str | None:
    return (expandable_id(dig(invoice, "parent", "subscription_details", "subscription"))
            or expandable_id(invoice.get("subscription")))


def invoice_subscription_metadata(invoice: dict) -> dict[str, str]:
    """Subscription metadata as the invoice carries it (2025: parent.subscription_details)."""
    for path in (("parent", "subscription_details"), ("subscription_details",)):
        details = dig(invoice, *path)
        if isinstance(details, dict) and isinstance(details.get("metadata"), dict):
            return metadata_of(details)
    sub = invoice.get("subscription")
    return metadata_of(sub) if isinstance(sub, dict) else {}


def invoice_payment_intent_id(invoice: dict) -> str | None:
    found = expandable_id(invoice.get("payment_intent"))
    if found:
        return found
    payments = dig(invoice, "payments", "data")
    if isinstance(payments, list):
        for payment in payments:
            pi = expandable_id(dig(payment, "payment", "payment_intent"))
            if pi:
                return pi
    return None


def invoice_lines(invoice: dict) -> list[dict]:
    lines = dig(invoice, "lines", "data")
    return [line for line in lines if isinstance(line, dict)] if isinstance(lines, list) else []


def invoice_price_and_product_ids(invoice: dict) -> tuple[list[str], list[str]]:
    """Price and product ids of the invoice lines (price, legacy plan, or 2025 pricing.price_details)."""
    prices: list[str] = []
    products: list[str] = []
    for line in invoice_lines(invoice):
        price = line.get("price") or line.get("plan")
        price_id = expandable_id(price) or expandable_id(dig(line, "pricing", "price_details", "price"))
        product_id = (expandable_id(price.get("product")) if isinstance(price, dict) else None) \
            or expandable_id(dig(line, "pricing", "price_details", "product"))
        if price_id and price_id not in prices:
            prices.append(price_id)
        if product_id and product_id not in products:
            products.append(product_id)
    return prices, products


def invoice_failure(invoice: dict) -> tuple[str | None, str | None]:
    """The decline code and message of the last failed charge, when the payload carries them."""
    for source in (invoice.get("charge"), dig(invoice, "payment_intent", "last_payment_error"),
                   dig(invoice, "last_finalization_error")):
        if isinstance(source, dict):
            code = source.get("failure_code") or source.get("decline_code") or source.get("code")
            message = source.get("failure_message") or source.get("message")
            if code or message:
                return code, message
    return None, None


def card_details(obj: Any) -> dict[str, Any] | None:
    """Brand, last four, expiry, funding, fingerprint of a card-like object; never more.

    Accepts a PaymentMethod (`card` hash), a legacy Card or Source (`object: card` / `source.card`),
    or a charge's `payment_method_details.card`.
    """
    if not isinstance(obj, dict):
        return None
    card = None
    if isinstance(obj.get("card"), dict):
        card = obj["card"]
    elif obj.get("object") == "card" or ("last4" in obj and "brand" in obj):
        card = obj
    elif isinstance(dig(obj, "payment_method_details", "card"), dict):
        card = obj["payment_method_details"]["card"]
    if card is None:
        return None
    brand = card.get("brand") or card.get("display_brand")
    return {
        "brand": str(brand).lower() if brand else None,
        "last4": str(card.get("last4"))[-4:] if card.get("last4") else None,
        "exp_month": _int_or_none(card.get("exp_month")),
        "exp_year": _int_or_none(card.get("exp_year")),
        "funding": card.get("funding"),
        "fingerprint": card.get("fingerprint"),
    }


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def merge_into_invoice(invoice: dict, prefetched: dict | None) -> dict:
    """The invoice with the prefetched PaymentIntent in place of its id (a new dict; same id only)."""
    intent = (prefetched or {}).get("payment_intent")
    if not isinstance(intent, dict) or invoice_payment_intent_id(invoice) != intent.get("id"):
        return invoice
    if isinstance(dig(invoice, "payment_intent", "last_payment_error"), dict):
        return invoice
    return {**invoice, "payment_intent": intent}
