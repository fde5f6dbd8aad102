"""`dunning events backfill`: with the webhook down, Stripe's Events API brings the same state as live delivery.

Stripe is faked at its HTTP boundary: a local server for GET /v1/events that pages like Stripe
(newest first, `limit`, `starting_after`, `has_more`) and refuses parameters Stripe would refuse.
"""

from __future__ import annotations

import json
import re
from urllib.parse import parse_qsl, urlparse

import pytest
from click.testing import CliRunner

from handlers.registry import known_types
from tests.support.dunning import DAY, T0, failed, paid
from tests.support.helpers import make_event, post_event, rows
from tests.support.http_fake import FakeHandler, FakeHTTPServer
from worker.cli import main

API_KEY = "sk_test_backfill_key_123456"
SINCE = "2026-11-16"  # T0 (the first failure) is 2026-11-18


class _EventsHandler(FakeHandler):
    def do_GET(self):  # noqa: N802
        self.fake.handle(self)


class FakeStripeEvents(FakeHTTPServer):
    """GET /v1/events as Stripe serves it; `page_cap` is the server's own page size (forces paging)."""

    handler = _EventsHandler

    def __init__(self, events: list[dict], page_cap: int = 2):
        super().__init__()
        self.events = sorted(events, key=lambda e: (e["created"], e["id"]), reverse=True)
        self.page_cap = page_cap
        self.requests: list[dict] = []
        self.fail_after: int | None = None  # answer 500 once this many pages were served
        self.served = 0

    def handle(self, request) -> None:
        url = urlparse(request.path)
        if url.path != "/v1/events":
            return self.reply(request, 404, {"error": {"type": "invalid_request_error",
                                                        "message": f"Unrecognized request URL (GET: {url.path})"}})
        if request.headers.get("Authorization") != f"Bearer {API_KEY}":
            return self.reply(request, 401, {"error": {"type": "invalid_request_error", "message": "bad key"}})
        params = parse_qsl(url.query)
        types = [v for k, v in params if re.fullmatch(r"types\[\d*\]", k)]
        other = {k: v for k, v in params if not k.startswith("types[")}
        self.requests.append({"types": types, **other})
        unknown = set(other) - {"created[gte]", "limit", "starting_after"}
        if unknown or not types or len(types) > 20 or int(other.get("limit", 10)) > 100:
            return self.reply(request, 400, {"error": {"type": "invalid_request_error",
                                                        "message": f"bad parameters {sorted(unknown)}"}})
        if self.fail_after is not None and self.served >= self.fail_after:
            return self.reply(request, 500, {"error": {"type": "api_error", "message": "outage"}})
        gte = int(other.get("created[gte]", 0))
        matching = [e for e in self.events if e["type"] in types and e["created"] >= gte]
        if "starting_after" in other:
            ids = [e["id"] for e in matching]
            matching = matching[ids.index(other["starting_after"]) + 1:]
        size = min(int(other.get("limit", 10)), self.page_cap)
        self.served += 1
        self.reply(request, 200, {"object": "list", "url": "/v1/events", "has_more": len(matching) > size,
                                  "data": matching[:size]})

    @staticmethod
    def reply(request, status: int, body: dict) -> None:
        request.answer(status, json.dumps(body).encode(), {"Content-Type": "application/json"})


@pytest.fixture
def scenario(stripe_data) -> list[dict]:
    """Two failing invoices (USD and JPY) of one customer; the first is paid two days later."""
    customer = {"id": "cus_test_1", "object": "customer", "email": "owner@example.com", "name": "Ada",
                "metadata": {"platform_account": "acct_42"}, "invoice_settings": {"default_payment_method": None}}
    return [
        make_event("customer.created", customer, event_id="evt_bf_customer", created=T0 - 3600),
        failed("in_bf_usd", created=T0, customer="cus_test_1", amount=4200),
        failed("in_bf_jpy", created=T0 + 60, customer="cus_test_1", amount=5000, currency="jpy",
               subscription="sub_test_2"),
        paid("in_bf_usd", created=T0 + 2 * DAY, customer="cus_test_1", amount=4200),
        # Not a dunning type: Stripe is asked only for the handled types, so this never comes back.
        make_event("balance.available", {"object": "balance", "id": "bal_1"}, event_id="evt_bf_balance",
                   created=T0 + 10),
    ]


def final_state(runtime) -> dict:
    """What processing left, without the random ids of our own rows."""
    def pick(table, *cols, **where):
        return sorted(tuple(str(r[c]) for c in cols) for r in rows(runtime, table, **where))
    cases = {r["id"]: r["invoice_id"] for r in rows(runtime, "cases")}
    return {
        # Events Stripe was not asked for (not dunning types) are stored as ignored by a webhook only.
        "events": sorted(x for x in pick("events", "id", "type", "status") if x[1] in known_types()),
        "invoices": pick("invoices", "id", "status", "amount_due", "currency", "customer_id"),
        "customers": pick("customers", "id", "email", "metadata"),
        "cases": pick("cases", "invoice_id", "state", "schedule", "amount_due", "currency", "next_step"),
        "transitions": sorted((cases[r["case_id"]], str(r["from_state"]), r["to_state"], r["trigger"])
                              for r in rows(runtime, "case_transitions")),
        "emails": pick("emails", "template", "invoice_id", "customer_id", "recipient", "subject"),
        "notices": pick("platform_notices", "type", "account_id", "seq", "invoice_id"),
    }


def process_in_order(runtime) -> None:
    """Process the events queue with one worker thread: in the order the events were enqueued.

    Live delivery enqueues in the order Stripe sent; backfill enqueues oldest first. With one
    thread both are processed in that order, so their outcomes can be compared exactly.
    """
    import dramatiq
    worker = dramatiq.Worker(runtime.broker, queues={"events"}, worker_threads=1, worker_timeout=20)
    worker.start()
    try:
        runtime.broker.join("events", timeout=30_000)
    finally:
        worker.stop()


def backfill_cli(*extra) -> dict:
    result = CliRunner().invoke(main, ["events", "backfill", "--since", SINCE, "--json", *extra])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.fixture
def live_state(make_runtime, tmp_path, scenario):
    """The reference: every event delivered by the webhook and processed."""
    import falcon.testing

    from worker.web.app import create_app
    live = make_runtime(DATABASE_URL=f"sqlite:///{tmp_path / 'live.sqlite3'}",
                        EMAIL_OUTBOX_DIR=str(tmp_path / "live-outbox"))
    client = falcon.testing.TestClient(create_app(live))
    for event in scenario:
        assert post_event(client, event).status_code == 200
    process_in_order(live)
    return final_state(live)


@pytest.fixture
def stripe_fake(scenario):
    with FakeStripeEvents(scenario) as fake:
        yield fake


@pytest.mark.parametrize("db", ["sqlite", "postgres"])
def test_backfill_with_the_webhook_down_reaches_the_same_state_as_live_delivery(
        live_state, make_runtime, stripe_fake, db):
    # one customer's two failures share one payment-failed email (issue 14: one email per account and step)
    assert sorted(e[0] for e in live_state["emails"]) == ["payment-failed", "payment-received"]
    assert sorted(c[:2] for c in live_state["cases"]) == [("in_bf_jpy", "failing"), ("in_bf_usd", "recovered")]
    down = make_runtime(db=db, STRIPE_API_KEY=API_KEY, STRIPE_API_BASE=stripe_fake.url)
    assert rows(down, "events") == []  # the webhook endpoint was down: nothing arrived

    first = backfill_cli()
    process_in_order(down)
    assert first["stored"] == 4 and first["enqueued"] == 4 and first["pages"] >= 2
    state = final_state(down)
    assert state == live_state
    assert {r["source"] for r in rows(down, "events")} == {"backfill"}
    assert all(r["status"] in ("processed", "ignored") for r in rows(down, "events"))

    # Stripe was asked exactly for our types, in groups it accepts, from the --since date.
    asked = set()
    for request in stripe_fake.requests:
        assert len(request["types"]) <= 20 and request["limit"] == "100"
        assert request["created[gte]"] == "1794787200"  # 2026-11-16T00:00:00Z
        asked.update(request["types"])
    assert asked == set(known_types())

    second = backfill_cli()
    process_in_order(down)
    assert second["stored"] == 0 and second["enqueued"] == 0 and second["already_stored"] == 4
    assert final_state(down) == state


@pytest.mark.parametrize("db", ["sqlite", "postgres"])
def test_an_interrupted_backfill_resumes_from_its_cursor(live_state, make_runtime, stripe_fake, db):
    down = make_runtime(db=db, STRIPE_API_KEY=API_KEY, STRIPE_API_BASE=stripe_fake.url)
    stripe_fake.fail_after = 1  # Stripe goes away after the first page
    broken = CliRunner().invoke(main, ["events", "backfill", "--since", SINCE, "--json"])
    assert broken.exit_code != 0
    stored_before = {r["id"] for r in rows(down, "events")}
    assert len(stored_before) == 2  # the first page is kept
    cursors = rows(down, "cursors")
    assert any(json.loads(c["value"])["starting_after"] and not json.loads(c["value"])["completed"]
               for c in cursors)

    stripe_fake.fail_after = None
    requests_before = len(stripe_fake.requests)
    resumed = backfill_cli()
    assert resumed["resumed"] is True
    assert "starting_after" in stripe_fake.requests[requests_before]  # it did not start over
    assert resumed["stored"] == 2 and resumed["enqueued"] == 4  # the interrupted run's events too
    process_in_order(down)
    assert final_state(down) == live_state


def test_backfill_without_a_stripe_key_is_one_clear_line(make_runtime):
    make_runtime()
    result = CliRunner().invoke(main, ["events", "backfill", "--since", SINCE])
    assert result.exit_code == 2
    assert "STRIPE_API_KEY" in result.output


def test_backfill_refuses_a_date_it_cannot_read(make_runtime):
    make_runtime(STRIPE_API_KEY=API_KEY)
    result = CliRunner().invoke(main, ["events", "backfill", "--since", "last tuesday"])
    assert result.exit_code == 2 and "--since" in result.output
