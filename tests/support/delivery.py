"""Builders for the delivery tests (emails, notices): rows as the state machine would leave them.

Rows are inserted directly with SQLAlchemy Core through a HandlerContext (from the unit of work), so these tests do not
depend on the state machine. What lies outside our walls (SendGrid, the platform's receiver)
is faked at its HTTP boundary in tests/support/fake_receivers.py.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Callable

import structlog

from handlers.context import HandlerContext
from tests.support.helpers import drain, rows
from worker.infra.unit_of_work import unit_of_work
from worker.pure.clock import utcnow
from worker.pure.json_text import dumps

log = structlog.get_logger("tests.delivery")


# -- rows ---------------------------------------------------------------------------------
def seed_case(runtime, *, case_id="dc_test_1", invoice_id="in_test_1", customer_id="cus_test_1",
              subscription_id="sub_test_1", email="owner@example.com", name="Ada Lovelace",
              currency="usd", amount=2500, customer_metadata=None, subscription_metadata=None,
              state="failing", disrupt_at=None) -> dict:
    """A customer, subscription, open invoice and case, as the state machine would leave them."""
    now = utcnow()
    db = runtime.db
    db.tables  # reflect before BEGIN IMMEDIATE: reflection uses a second SQLite connection
    with db.transaction() as conn:
        conn.execute(db.table("customers").insert().values(
            id=customer_id, email=email, name=name, metadata=dumps(customer_metadata or {}),
            deleted=False, source_created=0, updated_at=now))
        if subscription_id:
            conn.execute(db.table("subscriptions").insert().values(
                id=subscription_id, customer_id=customer_id, status="past_due",
                metadata=dumps(subscription_metadata or {}), source_created=0, updated_at=now))
        conn.execute(db.table("invoices").insert().values(
            id=invoice_id, customer_id=customer_id, subscription_id=subscription_id,
            number=f"NUM-{invoice_id[-4:]}", status="open", currency=currency, amount_due=amount,
            amount_remaining=amount, hosted_invoice_url=f"https://invoice.stripe.com/i/{invoice_id}",
            invoice_pdf=f"https://pay.stripe.com/invoice/{invoice_id}/pdf", source_created=0, updated_at=now))
        conn.execute(db.table("cases").insert().values(
            id=case_id, invoice_id=invoice_id, customer_id=customer_id, subscription_id=subscription_id,
            account_id=subscription_id or customer_id, state=state, schedule="default", currency=currency,
            amount_due=amount, first_failed_at=now, attempt_count=1,
            next_payment_attempt=now + timedelta(days=3), card_brand="visa", card_last4="4242",
            last_failure_message="Your card was declined.", disrupt_at=disrupt_at, opened_at=now,
            updated_at=now))
    return {"case_id": case_id, "invoice_id": invoice_id, "customer_id": customer_id,
            "subscription_id": subscription_id, "account_id": subscription_id or customer_id}


def in_handler(runtime, fn: Callable[[HandlerContext], object], now: datetime | None = None):
    """Run fn(ctx) inside one transaction like a handler does, then the after-commit work."""
    with unit_of_work(runtime, now=now, log=log) as ctx:
        result = fn(ctx)
    return result


# -- delivering ---------------------------------------------------------------------------------
def settle_outbox(runtime, table: str, sweep: Callable[[object, datetime], object], *, rounds: int) -> None:
    """Run the senders, then `sweep` a day ahead (past every backoff), until no row of `table`
    (emails, platform_notices) is pending or sending, or `rounds` sweeps have run."""
    drain(runtime)
    for _ in range(rounds):
        if not [r for r in rows(runtime, table) if r["status"] in ("pending", "sending")]:
            return
        sweep(runtime, utcnow() + timedelta(days=1))
        drain(runtime)
