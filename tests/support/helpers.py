"""Test helpers shared by every suite: signing, posting, draining queues, waiting."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import dramatiq

from worker.intake.signatures import sign

WEBHOOK_SECRET = "whsec_test_secret_for_the_suite"
ADMIN_TOKEN = "test-admin-token-0123456789"
SHARED = Path(__file__).resolve().parents[3] / "shared"  # ../shared, beside the checkout
STRIPE_DATA = SHARED / "stripe-data"


def signed_headers(body: str, secret: str = WEBHOOK_SECRET, timestamp: int | None = None) -> dict[str, str]:
    return {"Stripe-Signature": sign(body, secret, timestamp), "Content-Type": "application/json"}


def post_event(client, event: dict | str, secret: str = WEBHOOK_SECRET, timestamp: int | None = None):
    """POST a signed event to the falcon test client (or anything with .simulate_post)."""
    body = event if isinstance(event, str) else json.dumps(event)
    return client.simulate_post("/webhooks/stripe", body=body, headers=signed_headers(body, secret, timestamp))


def drain(runtime, timeout: float = 30.0, threads: int = 4) -> None:
    """Run a real dramatiq Worker on the stub broker until every queue (and delay queue) is empty."""
    broker = runtime.broker
    worker = dramatiq.Worker(broker, worker_timeout=20, worker_threads=threads)
    worker.start()
    try:
        deadline = time.monotonic() + timeout
        while True:
            for queue in list(broker.queues):
                if not queue.endswith(".DQ"):
                    broker.join(queue, timeout=int(max(1, deadline - time.monotonic()) * 1000),
                                fail_fast=False)
            if all(q.unfinished_tasks == 0 for q in broker.queues.values()):
                break
            if time.monotonic() > deadline:
                raise TimeoutError("queues did not drain")
    finally:
        worker.stop()


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05,
               message: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def load_stripe_file(relative: str) -> dict:
    """A payload from ../shared/stripe-data; the test skips cleanly where ../shared is absent."""
    path = STRIPE_DATA / relative
    if not path.is_file():
        import pytest
        pytest.skip(f"../shared/stripe-data is absent ({relative})", allow_module_level=True)
    return json.loads(path.read_text())


def make_event(event_type: str, obj: dict, *, event_id: str, created: int,
               previous_attributes: dict | None = None, api_version: str = "2025-03-31.basil") -> dict:
    data: dict[str, Any] = {"object": obj}
    if previous_attributes is not None:
        data["previous_attributes"] = previous_attributes
    return {"id": event_id, "object": "event", "type": event_type, "api_version": api_version,
            "created": created, "livemode": False, "pending_webhooks": 1, "data": data,
            "request": {"id": None, "idempotency_key": None}}


def rows(runtime, table: str, **where) -> list[dict]:
    from sqlalchemy import select
    t = runtime.db.table(table)
    stmt = select(t)
    for key, value in where.items():
        stmt = stmt.where(t.c[key] == value)
    with runtime.db.reading() as conn:  # no ROLLBACK: the code's prepared statements stay prepared
        return [dict(r) for r in conn.execute(stmt).mappings()]


def admin_client(runtime):
    """A falcon test client of the runtime's whole web app (call it with `bearer()` headers)."""
    import falcon.testing

    from worker.web.app import create_app
    return falcon.testing.TestClient(create_app(runtime))


def bearer(token: str = ADMIN_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
