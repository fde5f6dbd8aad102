"""Where a customer's data sits: the one map that erasure and export both read.

Why one map: "what do you hold about me" and "erase me" must cover the same rows, and a table
added later must not slip past either. A row belongs to a customer when its `customer_id` is the
customer, or its `invoice_id` / `case_id` is one of the customer's invoices / cases (found from
the table's columns, so a new table with such a column is found without code); events are found
by the customer id in their raw payload. Each column of such a table is either ERASED (and with
what) or KEPT (ids, amounts, currencies, states, times, counts): tests/integration/test_privacy.py fails when
a table of schema.sql with a customer_id or invoice id column, or one of its columns, is not
classified here.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Table, or_, select

from worker.pure.json_text import dumps

REMOVED_MARK = '{"dunning_removed":"'  # the start of every stripped event payload (see stripped_payload)

# column -> value written by an erasure (a callable gets the row and returns the value).
ERASED: dict[str, dict[str, Any]] = {
    "customers": {"email": None, "name": None, "metadata": "{}", "locale": None, "deleted": True},  # a language says much
    "subscriptions": {"metadata": "{}"},
    "invoices": {"hosted_invoice_url": None, "invoice_pdf": None},  # pages showing name and address
    "cases": {"card_brand": None, "card_last4": None, "card_exp_month": None, "card_exp_year": None,
              "last_failure_message": None},
    "case_transitions": {},
    "emails": {"recipient": "", "subject": "", "body_text": "", "body_html": "", "last_error": None,
               "status": lambda row: "cancelled" if row["status"] in ("pending", "sending") else row["status"]},
    "platform_notices": {"body": lambda row: _without_metadata(row["body"])},
    "accounts": {},
    "payment_links": {"note": None, "url": None, "last_error": None},
    "cards": {"brand": None, "last4": None, "exp_month": None, "exp_year": None, "fingerprint": None},
    "card_retries": {},
    "events": {"payload": lambda row: stripped_payload(row, "erasure")},
    "erasures": {},
    "console_actions": {"reason": "[erased]"},  # a support agent's free text may name the owner
    "case_releases": {"reason": "[erased]"},  # likewise an operator's reason for releasing a hold
    "email_steps": {},
}

# Columns kept by an erasure: no personal data (ids, amounts, currencies, states, times, counts).
KEPT: dict[str, tuple[str, ...]] = {
    "customers": ("id", "default_payment_method", "source_created", "updated_at"),
    "subscriptions": ("id", "customer_id", "status", "source_created", "updated_at"),
    "invoices": ("id", "customer_id", "subscription_id", "number", "status", "currency", "amount_due",
                 "amount_remaining", "payment_intent", "price_ids", "product_ids", "source_created", "updated_at"),
    "cases": ("id", "invoice_id", "customer_id", "subscription_id", "account_id", "state", "schedule", "currency",
              "amount_due", "first_failed_at", "attempt_count", "next_payment_attempt", "last_failure_code",
              "next_step", "next_step_at", "disrupt_at", "last_event_created", "opened_at", "closed_at",
              "recovered_amount", "version", "updated_at", "owner_unreachable", "hold_released", "last_email_at",
              "warned_at", "final_notice_at", "verify_failures", "steps_enqueued_at"),
    "case_transitions": ("id", "case_id", "from_state", "to_state", "trigger", "event_id", "step", "at"),
    "emails": ("id", "dedupe_key", "template", "case_id", "invoice_id", "customer_id", "attempts",
               "next_attempt_at", "lease_until", "provider_message_id", "created_at", "sent_at", "enqueued_at",
               "invoice_ids", "kind", "step"),
    "platform_notices": ("id", "dedupe_key", "type", "account_id", "seq", "case_id", "invoice_id", "customer_id",
                         "status", "attempts", "last_error", "next_attempt_at", "lease_until", "created_at",
                         "delivered_at", "enqueued_at"),
    "accounts": ("id", "customer_id", "subscription_id", "status", "disrupt_at", "disrupted_at", "notice_seq",
                 "updated_at"),
    "payment_links": ("id", "invoice_id", "customer_id", "requested_by", "requested_at", "status", "amount",
                      "currency", "methods", "stripe_id", "expires_at", "created_at", "enqueued_at"),
    "cards": ("id", "customer_id", "payment_method_id", "funding", "is_default", "event_id", "event_type",
              "recorded_at"),
    "card_retries": ("id", "dedupe_key", "invoice_id", "case_id", "customer_id", "payment_method_id", "status",
                     "decline_code", "last_error", "created_at", "finished_at", "enqueued_at",
                     "card_expiry"),  # kept like dedupe_key, which holds it: a retry is never repeated
    "events": ("id", "type", "object_id", "api_version", "created", "livemode", "source", "received_at", "status", "attempts",
               "last_error", "enqueued_at", "lease_until", "processed_at", "failed_transient", "first_failed_at",
               "redrive_at"),
    "erasures": ("customer_id", "erased_at", "requested_by", "event_id", "reason"),
    "console_actions": ("id", "at", "actor", "action", "case_id", "invoice_id", "target", "outcome"),
    "case_releases": ("id", "case_id", "released_by", "released_at"),
    "email_steps": ("dedupe_key", "email_id", "case_id", "invoice_id", "customer_id", "step", "created_at"),
}

LINK_COLUMNS = ("customer_id", "invoice_id", "case_id")


def customer_tables(tables: dict[str, Table]) -> list[str]:
    """Tables holding rows of a customer: a customer_id, invoice_id or case_id column, or the events."""
    names = [name for name, table in tables.items()
             if any(col in table.c for col in LINK_COLUMNS) or name in ("customers", "events")]
    return sorted(names)


def unclassified(tables: dict[str, Table]) -> dict[str, list[str]]:
    """Per customer table, the columns neither ERASED nor KEPT (must be empty)."""
    missing: dict[str, list[str]] = {}
    for name in customer_tables(tables):
        known = set(ERASED.get(name, {})) | set(KEPT.get(name, ()))
        cols = [c.name for c in tables[name].c if c.name not in known]
        if cols or name not in KEPT:
            missing[name] = cols or ["<table not classified>"]
    return missing


def _like_literal(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def customer_keys(conn, tables: dict[str, Table], customer_id: str) -> dict[str, list[str]]:
    """The customer's invoice and case ids (rows of other tables hang on them)."""
    invoices, cases = tables["invoices"], tables["cases"]
    invoice_ids = set(conn.execute(select(invoices.c.id).where(invoices.c.customer_id == customer_id)).scalars())
    invoice_ids |= set(conn.execute(select(cases.c.invoice_id).where(cases.c.customer_id == customer_id)).scalars())
    case_ids = list(conn.execute(select(cases.c.id).where(or_(
        cases.c.customer_id == customer_id, cases.c.invoice_id.in_(sorted(invoice_ids))))).scalars())
    return {"customer_id": [customer_id], "invoice_id": sorted(invoice_ids), "case_id": sorted(case_ids)}


def row_filter(table: Table, name: str, customer_id: str, keys: dict[str, list[str]]):
    """The WHERE clause selecting the customer's rows of `table`, or None when it has none."""
    if name == "customers":
        return table.c.id == customer_id
    if name == "events":
        return table.c.payload.like(f'%"{_like_literal(customer_id)}"%', escape="\\")
    clauses = [table.c[col].in_(keys[col]) for col in LINK_COLUMNS if col in table.c and keys[col]]
    return or_(*clauses) if clauses else None


# -- stripping --------------------------------------------------------------------------------
def stripped_payload(row, why: str) -> str:
    """An event body without its personal data: the envelope's id, type and created, the object's id.

    Starts with REMOVED_MARK, so a stripped payload is recognised (and never stripped twice).
    """
    payload = row["payload"] if not isinstance(row, str) else row
    if payload.startswith(REMOVED_MARK):
        return payload
    try:
        event = json.loads(payload)
    except ValueError:
        event = {}
    obj = (event.get("data") or {}).get("object") if isinstance(event, dict) else None
    obj = obj if isinstance(obj, dict) else {}
    kept = {"id": event.get("id"), "object": "event", "type": event.get("type"), "created": event.get("created"),
            "api_version": event.get("api_version"), "livemode": event.get("livemode"),
            "data": {"object": {"id": obj.get("id"), "object": obj.get("object")}}}
    return REMOVED_MARK + why + '",' + dumps(kept)[1:]


def is_stripped(payload: str | None) -> bool:
    return bool(payload) and payload.startswith(REMOVED_MARK)


def _without_metadata(body: str) -> str:
    """A platform notice body with its metadata values gone (ids, type and times stay)."""
    try:
        data = json.loads(body)
    except ValueError:
        return "{}"
    if isinstance(data, dict) and data.get("metadata"):
        data["metadata"] = {}
        return dumps(data)
    return body


def erased_values(name: str, row) -> dict[str, Any]:
    """The erased columns' new values for one row (callables applied)."""
    out: dict[str, Any] = {}
    for col, value in ERASED.get(name, {}).items():
        out[col] = value(row) if callable(value) else value
    return out
