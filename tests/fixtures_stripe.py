"""Fixtures for the tests that reach Stripe: the strict local fake server and a runtime pointed at it."""

from __future__ import annotations

import falcon.testing
import pytest

from tests.fake_stripe import API_KEY, FakeStripe, FakeStripeServer
from tests.fixtures_dunning import T0, deliver, failed
from tests.helpers import ADMIN_TOKEN


@pytest.fixture
def fake_stripe():
    """A FakeStripe (state + request log) served on 127.0.0.1 for the test."""
    with FakeStripeServer() as fake:
        yield fake


@pytest.fixture(params=["sqlite", "postgres"])
def stripe_runtime(make_runtime, fake_stripe, request):
    """A runtime on SQLite and on PostgreSQL whose STRIPE_API_BASE is the fake server."""
    return make_runtime(db=request.param, STRIPE_API_KEY=API_KEY, STRIPE_API_BASE=fake_stripe.base_url)


@pytest.fixture
def sqlite_stripe_runtime(make_runtime, fake_stripe):
    return make_runtime(STRIPE_API_KEY=API_KEY, STRIPE_API_BASE=fake_stripe.base_url)


def admin_client(runtime) -> falcon.testing.TestClient:
    from worker.web.app import create_app
    return falcon.testing.TestClient(create_app(runtime))


def bearer(token: str = ADMIN_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


def open_case(runtime, fake: FakeStripe | None, invoice_id: str, *, customer: str = "cus_owner",
              amount: int = 12000, currency: str = "usd", subscription: str | None = "sub_owner",
              email: str = "owner@example.com", created: int = T0) -> None:
    """A failed invoice through the real pipeline (invoice.payment_failed -> a case in `failing`),
    and the same invoice at the fake Stripe."""
    if fake is not None:
        fake.add_invoice(invoice_id, customer, amount, currency, subscription=subscription)
        if customer not in fake.customers:
            fake.add_customer(customer, email=email)
    assert deliver(runtime, failed(invoice_id, customer=customer, amount=amount, currency=currency,
                                   subscription=subscription, email=email, created=created)) == "processed"
