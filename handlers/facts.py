"""Stripe facts we keep (customers, subscriptions, invoices), upserted newest-wins.

Stripe delivers out of order: a row remembers the `created` of the event that wrote it and
an older event never overwrites it. For invoices, final statuses (paid, void, uncollectible)
stick whatever arrives later: an invoice that was paid cannot fail again.
"""

from __future__ import annotations

import functools
from typing import Any

from sqlalchemy import Table, bindparam, select, update

from handlers.context import HandlerContext
from handlers.stripe_objects import (
    expandable_id,
    invoice_payment_intent_id,
    invoice_price_and_product_ids,
    invoice_subscription_id,
    invoice_subscription_metadata,
    metadata_of,
)
from worker.pure.json_text import dumps
from worker.pure.locales import choose_locale

FINAL_INVOICE_STATUSES = ("paid", "void", "uncollectible")
# Rows a transaction may keep once it wrote or read them (ctx.rows), because every write to them in
# a handler's transaction updates or drops the kept copy: _upsert, upsert_invoice, accounts._set,
# outbox._next_seq, verification's invoice status, and the erasure scrub (which drops them all).
KEPT_TABLES = ("customers", "invoices", "accounts")
# (A subscription row ensure_subscription(hold=True) locked is kept too, for handlers.invoices and the
# outbox's `remembered`, not for `load`: _upsert drops it, the erasure scrub drops them all.)


def remember(ctx: HandlerContext, table_name: str, row) -> dict | None:
    """Keep `row` (as this transaction wrote or read it) so later code asks `remembered`, not the database."""
    if row is None:
        return None
    row = dict(row)
    ctx.rows[(table_name, row["id"])] = row
    return dict(row)


def remembered(ctx: HandlerContext, table_name: str, row_id: str | None) -> dict | None:
    kept = ctx.rows.get((table_name, row_id)) if row_id else None
    return dict(kept) if kept is not None else None


def forget(ctx: HandlerContext, table_name: str, row_id: str | None) -> None:
    ctx.rows.pop((table_name, row_id), None)


def _upsert(ctx: HandlerContext, table_name: str, row_id: str, values: dict[str, Any], created: int) -> None:
    """Insert, or update when `created` is not older than what the row holds."""
    table = ctx.table(table_name)
    values = {**values, "source_created": created, "updated_at": ctx.now}
    inserted = ctx.db.insert_new(ctx.conn, table, {"id": row_id, **values}, "id")
    if not inserted:
        ctx.db.run(ctx.conn, _update_unless_newer(table), {**values, "w_id": row_id, "w_created": created})
    forget(ctx, table_name, row_id)


@functools.lru_cache(maxsize=16)
def _update_unless_newer(table: Table):
    """UPDATE of the row by id unless it holds a newer fact; built once (the SET columns are the
    parameters' names: SQLAlchemy compiles each set once)."""
    return update(table).where(table.c.id == bindparam("w_id"), table.c.source_created <= bindparam("w_created"))


def upsert_customer(ctx: HandlerContext, customer: dict, created: int) -> None:
    cid = customer.get("id")
    if not isinstance(cid, str):
        return
    values: dict[str, Any] = {
        "email": customer.get("email"),
        "name": customer.get("name") or customer.get("description"),
        "metadata": dumps(metadata_of(customer)),
        "deleted": bool(customer.get("deleted")),
    }
    if "preferred_locales" in customer:
        # The emails' language (issue 14): the first of Stripe's preferred_locales we have a catalogue for
        # (None: the policy's default). A payload without the field (a deleted customer, an expanded
        # stub) leaves the language known so far.
        values["locale"] = choose_locale(customer.get("preferred_locales"))
    default_pm = (expandable_id((customer.get("invoice_settings") or {}).get("default_payment_method"))
                  or expandable_id(customer.get("default_source")))
    values["default_payment_method"] = default_pm
    if erased_in(ctx, cid):
        # Erased: what Stripe still holds (a step's re-read, a late customer.* event) never brings
        # the personal values back; ids and the default payment method stay, as erasure keeps them.
        values.update(email=None, name=None, metadata="{}", locale=None, deleted=True)
    _upsert(ctx, "customers", cid, values, created)


def ensure_customer(ctx: HandlerContext, customer_id: str, name: str | None, created: int) -> None:
    """Know a customer from an invoice when no customer event reached us (never overwrites).

    Never its address: an invoice's `customer_email` is a snapshot, not the owner of record (the
    platform may have cleared the address on purpose). Mail waits for a customer.* event or a
    read of the customer from Stripe (worker/intake/customer_prefetch.py); until then the owner is
    unreachable (handlers/reachability.py).
    """
    if customer_id == ctx.held_customer:  # its row exists, held by this transaction (processing)
        return
    ctx.db.insert_new(ctx.conn, ctx.table("customers"), {
        "id": customer_id, "email": None, "name": name, "metadata": "{}",
        "deleted": False, "source_created": 0, "updated_at": ctx.now,
    }, "id")


def ensure_subscription(ctx: HandlerContext, subscription_id: str, customer_id: str,
                        metadata: dict[str, str], *, hold: bool = False) -> None:
    """Know a subscription (and the metadata the invoice carries) when no subscription event reached us.

    The platform keeps its app id in the subscription's metadata and every platform notice carries
    it: an invoice is often all we hear of a subscription. Never overwrites (source_created 0:
    any subscription event wins). `hold`: the row is also locked and kept (`remembered`), in the
    same statement, for a caller that reads it next (handlers.invoices._subscription_deleted).
    """
    table = ctx.table("subscriptions")
    row = {"id": subscription_id, "customer_id": customer_id, "status": None, "metadata": dumps(metadata),
           "source_created": 0, "updated_at": ctx.now}
    if not hold:
        ctx.db.insert_new(ctx.conn, table, row, "id")
        return
    remember(ctx, "subscriptions", ctx.db.insert_or_lock(ctx.conn, table, row, "id", "updated_at"))


def upsert_subscription(ctx: HandlerContext, subscription: dict, created: int) -> None:
    sid = subscription.get("id")
    customer_id = expandable_id(subscription.get("customer"))
    if not isinstance(sid, str) or not customer_id:
        return
    _upsert(ctx, "subscriptions", sid, {
        "customer_id": customer_id,
        "status": subscription.get("status"),
        "metadata": dumps(metadata_of(subscription)),
    }, created)


def upsert_invoice(ctx: HandlerContext, invoice: dict, created: int, *, hold_subscription: bool = False
                   ) -> dict | None:
    """Record the invoice's latest state; return the stored row (a mapping). `hold_subscription`:
    its subscription row is locked and kept too (ensure_subscription)."""
    iid = invoice.get("id")
    customer_id = expandable_id(invoice.get("customer"))
    if not isinstance(iid, str) or not customer_id:
        return None
    prices, products = invoice_price_and_product_ids(invoice)
    values = {
        "customer_id": customer_id,
        "subscription_id": invoice_subscription_id(invoice),
        "number": invoice.get("number"),
        "status": invoice.get("status") or "open",
        "currency": (invoice.get("currency") or "usd").lower(),
        "amount_due": int(invoice.get("amount_due") or 0),
        "amount_remaining": int(invoice.get("amount_remaining", invoice.get("amount_due")) or 0),
        "hosted_invoice_url": invoice.get("hosted_invoice_url"),
        "invoice_pdf": invoice.get("invoice_pdf"),
        "payment_intent": invoice_payment_intent_id(invoice),
        "price_ids": dumps(prices),
        "product_ids": dumps(products),
    }
    table = ctx.table("invoices")
    stored: dict[str, Any] = {"id": iid, "source_created": created, "updated_at": ctx.now, **values}
    # One statement inserts the row or returns the stored one, locked (ON CONFLICT DO UPDATE writes
    # nothing new: updated_at is set to itself); two first events of one invoice racing on PostgreSQL
    # never hit a unique violation. A row equal to ours (the one just inserted) needs no update.
    existing = ctx.db.insert_or_lock(ctx.conn, table, stored, "id", "updated_at")
    if all(existing[k] == v for k, v in stored.items()):  # ours, as inserted (an older row has its own updated_at)
        ctx.inserted_invoices.add(iid)
    elif any(existing[k] != v for k, v in stored.items() if k != "updated_at"):  # an older row: newest wins
        existing_final = existing["status"] in FINAL_INVOICE_STATUSES
        if existing_final and values["status"] not in FINAL_INVOICE_STATUSES:
            values["status"] = existing["status"]  # paid/void/uncollectible stick
        # A newer fact wins; an older one only when it ends an invoice we still think is open.
        if created >= existing["source_created"] or (values["status"] != existing["status"] and not existing_final):
            changes = {"source_created": max(created, existing["source_created"]), "updated_at": ctx.now, **values}
            ctx.db.update_by(ctx.conn, table, changes, id=iid)
            existing = {**existing, **changes}
    if isinstance(invoice.get("customer"), dict):
        upsert_customer(ctx, invoice["customer"], created)
    else:
        ensure_customer(ctx, customer_id, invoice.get("customer_name"), created)
    if values["subscription_id"]:
        ensure_subscription(ctx, values["subscription_id"], customer_id, invoice_subscription_metadata(invoice),
                            hold=hold_subscription)
    return remember(ctx, "invoices", existing)  # as this transaction holds it (locked): the outbox renders from it too


def load(ctx: HandlerContext, table_name: str, row_id: str | None) -> dict | None:
    """The row by id: the copy this transaction keeps (KEPT_TABLES), else read (and kept)."""
    if not row_id:
        return None
    if table_name in KEPT_TABLES and (kept := remembered(ctx, table_name, row_id)) is not None:
        return kept
    row = ctx.db.row_by(ctx.conn, ctx.table(table_name), id=row_id)
    if row is not None and table_name in KEPT_TABLES:
        return remember(ctx, table_name, row)
    return row


def is_erased(conn, db, customer_id: str | None) -> bool:
    """True once the customer was erased (an `erasures` row): what Stripe still holds never comes back."""
    if not customer_id:
        return False
    return db.run(conn, _erasure_of(db.table("erasures")), {"b_customer": customer_id}).first() is not None


@functools.lru_cache(maxsize=16)
def _erasure_of(erasures: Table):
    return select(erasures.c.customer_id).where(erasures.c.customer_id == bindparam("b_customer"))


def erased_in(ctx: HandlerContext, customer_id: str | None) -> bool:
    """is_erased, asked once per transaction where the answer cannot change before commit.

    That is the customer held by hold_customer (ctx.held_customer: the first question, asked after
    the lock was granted, sees any erasure committed before it, and a later one waits for this
    commit), or any customer on SQLite (one writer at a time)."""
    if customer_id in ctx.erased:
        return ctx.erased[customer_id]
    erased = is_erased(ctx.conn, ctx.db, customer_id)
    if customer_id and (customer_id == ctx.held_customer or ctx.db.is_sqlite):
        ctx.erased[customer_id] = erased
    return erased
