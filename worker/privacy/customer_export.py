"""`dunning customers export CUSTOMER`: everything held about one customer, as one JSON document.

The rows are found by the same map as erasure (worker/privacy/customer_data.py), so the export covers
exactly what an erasure would touch: the customer row, its erasure record, subscriptions,
accounts, invoices, cases (each with its transitions), emails (bodies while held), platform
notices, payment links, cards, card retries and its events (payloads while held), plus any table
added later with a customer_id, invoice_id or case_id column.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import select

from worker.privacy import customer_data as cd
from worker.pure.clock import utcnow
from worker.privacy.erasure import UnknownCustomer


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat() + "Z"
    return value


def _rows(conn, table, where, order) -> list[dict]:
    stmt = select(table).where(where).order_by(*order)
    return [{k: _plain(v) for k, v in dict(r).items()} for r in conn.execute(stmt).mappings()]


def export_customer(db, customer_id: str) -> dict:
    """The document; raises UnknownCustomer when no customer row (nor erasure record) exists."""
    tables = db.tables
    with db.reading(snapshot=True) as conn:
        customers, erasures = tables["customers"], tables["erasures"]
        customer = conn.execute(select(customers).where(customers.c.id == customer_id)).mappings().first()
        erased = conn.execute(select(erasures).where(erasures.c.customer_id == customer_id)).mappings().first()
        if customer is None and erased is None:
            raise UnknownCustomer(f"no customer {customer_id} is known")
        keys = cd.customer_keys(conn, tables, customer_id)
        doc: dict[str, Any] = {"customer_id": customer_id, "exported_at": _plain(utcnow())}
        for name in cd.customer_tables(tables):
            table = tables[name]
            where = cd.row_filter(table, name, customer_id, keys)
            if where is None:
                doc[name] = []
                continue
            order = [table.c[c] for c in ("received_at", "created_at", "at", "recorded_at", "requested_at")
                     if c in table.c][:1] + list(table.primary_key.columns)
            doc[name] = _rows(conn, table, where, order)
    doc["customer"] = doc.pop("customers")[0] if doc.get("customers") else None
    doc["erasure"] = (doc.pop("erasures") or [None])[0]
    if doc.get("customer") is not None:
        doc["customer"]["metadata"] = json.loads(doc["customer"]["metadata"] or "{}")
    transitions = doc.pop("case_transitions", [])
    for case in doc.get("cases", []):
        case["transitions"] = [t for t in transitions if t["case_id"] == case["id"]]
    for event in doc.get("events", []):
        payload = event.pop("payload")
        event["payload_held"] = not cd.is_stripped(payload)
        event["payload"] = json.loads(payload) if event["payload_held"] else None
    for email in doc.get("emails", []):
        email["content_held"] = bool(email["body_text"] or email["body_html"])
    return doc
