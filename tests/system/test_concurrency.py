"""Concurrency: shuffled, triplicated delivery to 4 worker processes x 8 threads = one in-order run.

1,000 events for 100 invoices (10 each: customer and subscription facts, invoice life, three
failed attempts) are shuffled and each is delivered 3 times to the real service on PostgreSQL
(web: 2 gunicorn workers; `dunning worker --processes 4 --threads 8`). Then time moves
(`dunning tick --at`), payments and voids arrive (shuffled, 3 times), time moves again, and late
payments arrive after disruption. After each phase the final case states, the emails
(invoice, template, recipient) and the platform notices (account, type) must equal those of a
reference run that received each event once, in order, on one thread.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import falcon.testing
import pytest
import requests
from sqlalchemy import text

from tests.support.dunning import bare_invoice
from tests.support.helpers import drain, make_event, signed_headers
from tests.support.processes import build_service
from worker.web.app import create_app

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

INVOICES = 100
DAY = 86400


def _event(event_id, event_type, obj, created):
    return make_event(event_type, obj, event_id=event_id, created=created)


def _invoice(i, status, attempt, base, **extra):
    return bare_invoice(
        f"in_cc{i:03d}", customer=f"cus_cc{i:03d}", subscription=f"sub_cc{i:03d}", status=status,
        number=f"CC-{i:04d}", email=f"owner{i}@cc.example.com", amount=2500 + i,
        currency="eur" if i % 3 else "jpy", attempt_count=attempt, subscription_metadata={"plan": "pro"},
        lines=[{"id": f"il_cc{i}", "amount": 2500 + i,
                "pricing": {"price_details": {"price": "price_pro", "product": "prod_pro"}}}],
        hosted_invoice_url=f"https://pay.example/{i}",
        next_payment_attempt=base + (attempt + 2) * DAY if status == "open" else None, **extra)


def failure_week(base: int) -> list[dict]:
    """1,000 events: 10 per invoice, in the order Stripe would have sent them."""
    events = []
    for i in range(INVOICES):
        customer = {"id": f"cus_cc{i:03d}", "object": "customer", "email": f"owner{i}@cc.example.com",
                    "name": f"Owner {i}", "metadata": {"account": f"acct_{i}"},
                    "invoice_settings": {"default_payment_method": None}}
        sub = {"id": f"sub_cc{i:03d}", "object": "subscription", "customer": f"cus_cc{i:03d}",
               "status": "active", "metadata": {"plan": "pro"}}
        e = lambda n, t, o, dt: _event(f"evt_cc{i:03d}_{n:02d}", t, o, base + dt)  # noqa: E731
        events += [
            e(0, "customer.created", customer, 0),
            e(1, "customer.subscription.created", sub, 1),
            e(2, "invoice.created", _invoice(i, "draft", 0, base), 2),
            e(3, "invoice.finalized", _invoice(i, "open", 0, base), 3),
            e(4, "invoice.payment_failed", _invoice(i, "open", 1, base), 10),
            e(5, "invoice.updated", _invoice(i, "open", 1, base), 11),
            e(6, "invoice.payment_failed", _invoice(i, "open", 2, base + DAY), DAY),
            e(7, "customer.updated", {**customer, "name": f"Owner {i} Renamed"}, DAY + 5),
            e(8, "invoice.payment_failed", _invoice(i, "open", 3, base + 2 * DAY), 2 * DAY),
            e(9, "customer.subscription.updated", {**sub, "status": "past_due"}, 2 * DAY + 5),
        ]
    assert len(events) == 1000
    return events


def settlements(base: int, day: int, which: dict[int, str]) -> list[dict]:
    """invoice.paid / invoice.voided on `day` for the invoices selected by i % 4."""
    events = []
    for i in range(INVOICES):
        kind = which.get(i % 4)
        if kind == "paid":
            obj = _invoice(i, "paid", 3, base, amount_paid=2500 + i, amount_remaining=0)
            events.append(_event(f"evt_cc{i:03d}_paid_d{day}", "invoice.paid", obj, base + day * DAY))
        elif kind == "void":
            events.append(_event(f"evt_cc{i:03d}_void_d{day}", "invoice.voided", _invoice(i, "void", 3, base),
                                 base + day * DAY))
    return events


def iso_at(base: int, days: float) -> str:
    return datetime.fromtimestamp(base + days * DAY, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def snapshot(connect) -> dict:
    """What the owner and the platform see, independent of ids, timing and interleaving."""
    with connect() as conn:
        q = lambda sql: [dict(r) for r in conn.execute(text(sql)).mappings()]  # noqa: E731
        cases = {r["invoice_id"]: r["state"] for r in q("SELECT invoice_id, state FROM cases")}
        emails = Counter((r["invoice_id"], r["template"], r["recipient"], r["status"])
                         for r in q("SELECT invoice_id, template, recipient, status FROM emails"))
        notices = Counter((r["account_id"], r["type"], r["status"])
                          for r in q("SELECT account_id, type, status FROM platform_notices"))
        events = Counter(r["status"] for r in q("SELECT status FROM events"))
    return {"cases": cases, "emails": emails, "notices": notices, "events": events}


PHASES = [
    ("failure week", lambda base: failure_week(base), None),
    ("day 4: a quarter pay, a quarter are voided", lambda base: settlements(base, 4, {0: "paid", 1: "void"}),
     4.2),
    ("day 15: a quarter pay after disruption", lambda base: settlements(base, 15, {2: "paid"}), 15.2),
]


def reference_run(make_runtime, base: int) -> list[dict]:
    """Each event once, in order, one worker thread; ticks as in the concurrent run."""
    import dramatiq

    from worker.scheduling.scheduler import run_pass
    runtime = make_runtime(db="sqlite")
    client = falcon.testing.TestClient(create_app(runtime))
    snaps = []
    worker = dramatiq.Worker(runtime.broker, worker_timeout=10, worker_threads=1)
    worker.start()
    try:
        for _name, make, tick_days_before in PHASES:
            if tick_days_before is not None:
                run_pass(runtime, datetime.fromtimestamp(base + (tick_days_before - 0.1) * DAY, timezone.utc)
                         .replace(tzinfo=None))
                drain(runtime, timeout=120, threads=1)  # the due steps run before the phase's events
            for event in make(base):
                body = json.dumps(event)
                assert client.simulate_post("/webhooks/stripe", body=body,
                                            headers=signed_headers(body)).status_code == 200
                runtime.broker.join("events", timeout=30_000, fail_fast=True)  # one event at a time
            drain(runtime, timeout=120, threads=1)
            snaps.append(snapshot(runtime.db.engine.connect))
    finally:
        worker.stop()
    return snaps


def post_shuffled(url: str, events: list[dict], copies: int = 3, threads: int = 8, seed: int = 7) -> Counter:
    deliveries = [e for e in events for _ in range(copies)]
    random.Random(seed).shuffle(deliveries)
    local = threading.local()
    statuses: Counter = Counter()
    lock = threading.Lock()

    def post(event):
        session = getattr(local, "s", None) or requests.Session()
        local.s = session
        body = json.dumps(event)
        for _ in range(20):
            status = session.post(url, data=body.encode(), headers=signed_headers(body), timeout=30).status_code
            if status == 200:
                break
            time.sleep(0.5)
        with lock:
            statuses[status] += 1

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(post, deliveries))
    return statuses


def wait_settled(svc, expected: dict, timeout: float = 240) -> dict:
    """Wait until the concurrent run's snapshot equals the expected one (or time runs out)."""
    deadline = time.monotonic() + timeout
    while True:
        snap = snapshot(svc.engine.connect)
        if snap == expected:
            time.sleep(3)  # and stays so: nothing late adds a duplicate
            again = snapshot(svc.engine.connect)
            if again == expected:
                return again
            snap = again
        if time.monotonic() > deadline:
            return snap
        time.sleep(1)


def test_shuffled_triplicated_events_on_4x8_workers_end_like_one_in_order_run(tmp_path, make_runtime):
    base = int(time.time()) - DAY  # day 3 is still ahead on the real clock: only ticks move time
    expected = reference_run(make_runtime, base)
    assert sum(expected[0]["emails"].values()) >= INVOICES, "the reference run sent the day-0 emails"

    svc = build_service(tmp_path / "svc", db="postgres", broker="redis")
    try:
        web = svc.start_web(workers=2, threads=8)
        worker = svc.start_worker(processes=4, threads=8)
        scheduler = svc.start_scheduler()
        for index, (name, make, tick_days_before) in enumerate(PHASES):
            if tick_days_before is not None:
                at = iso_at(base, tick_days_before - 0.1)
                svc.tick(at)
                due = "SELECT COUNT(*) FROM cases WHERE next_step_at <= :at"
                svc.wait_for(lambda: svc.scalar(due, at=datetime.fromisoformat(at[:-1])) == 0, timeout=120,
                             message="the due steps to run", watch=[worker])
                # As in the reference run, the steps' emails and notices are delivered before the
                # phase's payments arrive: a payment that overtakes an undelivered step email
                # cancels it, by design, and the reference would not show that.
                undelivered = ("SELECT (SELECT COUNT(*) FROM emails WHERE status IN ('pending', 'sending'))"
                               " + (SELECT COUNT(*) FROM platform_notices WHERE status IN ('pending', 'sending'))")
                svc.wait_for(lambda: svc.scalar(undelivered) == 0, timeout=120,
                             message="the steps' emails and notices to be delivered", watch=[worker])
            events = make(base)
            statuses = post_shuffled(f"{svc.base_url}/webhooks/stripe", events)
            assert set(statuses) == {200}, statuses
            got = wait_settled(svc, expected[index])
            for proc in (web, worker, scheduler):
                assert proc.alive(), f"{proc.name} died:\n{proc.log()[-3000:]}"
            diff_cases = {k: (v, got["cases"].get(k)) for k, v in expected[index]["cases"].items()
                          if got["cases"].get(k) != v}
            assert diff_cases == {}, f"{name}: case states differ"
            assert got["emails"] == expected[index]["emails"], f"{name}: emails differ"
            assert got["notices"] == expected[index]["notices"], f"{name}: notices differ"
            assert got["events"] == expected[index]["events"], f"{name}: event statuses differ"
            duplicates = sum(n - 1 for n in got["emails"].values() if n > 1)
            retried = svc.scalar("SELECT COUNT(*) FROM events WHERE attempts > 1")
            print(f"\n{name}: {len(events)} events x3 shuffled; cases {Counter(got['cases'].values())}; "
                  f"emails {sum(got['emails'].values())} (duplicates {duplicates}); "
                  f"notices {sum(got['notices'].values())}; events that needed a retry {retried}")
            assert duplicates == 0
    finally:
        svc.close()
