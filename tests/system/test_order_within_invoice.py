"""Issue 12, order within an invoice: a failure and the payment that supersedes it, back to back.

200 (invoice.paid, older invoice.payment_failed) pairs are posted back to back, each pair in a
random order, to the real service (web, `dunning worker --processes 2 --threads 8`, scheduler)
on PostgreSQL and Redis. No owner may get a payment-failed email for an invoice that is paid:
the handlers of one invoice are serialized on its invoices row, an older failure never opens a
live case once the paid is recorded, and the day-0 email waits FIRST_EMAIL_DELAY_SECONDS so a
paid processed right behind the failure cancels it before delivery. Control invoices that only
failed do get their email (the test can fail).
"""

from __future__ import annotations

import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.support.dunning import bare_invoice
from tests.support.helpers import make_event, signed_headers
from tests.support.processes import build_service

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

PAIRS = 200
CONTROLS = 5


def _event(event_id, event_type, obj, created):
    return make_event(event_type, obj, event_id=event_id, created=created)


def _invoice(i: int, status: str) -> dict:
    return bare_invoice(f"in_pair{i:03d}", customer=f"cus_pair{i:03d}", subscription=f"sub_pair{i:03d}",
                        status=status, number=f"P-{i:04d}", email=f"snapshot{i}@pair.example.com")


def _post_all(url: str, groups: list[list[dict]], threads: int = 8) -> None:
    """Each group's events back to back on one connection; groups in parallel."""
    local = threading.local()

    def post(group):
        session = getattr(local, "s", None) or requests.Session()
        local.s = session
        for event in group:
            body = json.dumps(event)
            for _ in range(20):
                if session.post(url, data=body.encode(), headers=signed_headers(body), timeout=30).status_code == 200:
                    break
                time.sleep(0.5)
            else:
                raise AssertionError(f"{event['id']} was never accepted")

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(post, groups))


def test_200_paid_and_older_failure_pairs_in_random_order_send_no_payment_failed_email(tmp_path):
    rng = random.Random(12)
    base = int(time.time()) - 3600
    owners = [_event(f"evt_owner{i:03d}", "customer.created",
                     {"id": f"cus_pair{i:03d}", "object": "customer", "email": f"owner{i}@pair.example.com",
                      "name": f"Owner {i}", "metadata": {}, "invoice_settings": {"default_payment_method": None}},
                     base - 100) for i in range(PAIRS + CONTROLS)]
    pairs = []
    for i in range(PAIRS):
        pair = [_event(f"evt_fail{i:03d}", "invoice.payment_failed", _invoice(i, "open"), base),
                _event(f"evt_paid{i:03d}", "invoice.paid", _invoice(i, "paid"), base + 60)]
        rng.shuffle(pair)
        pairs.append(pair)
    rng.shuffle(pairs)
    controls = [[_event(f"evt_ctrl{i:03d}", "invoice.payment_failed", _invoice(i, "open"), base)]
                for i in range(PAIRS, PAIRS + CONTROLS)]

    svc = build_service(tmp_path / "svc", db="postgres", broker="redis")
    try:
        web = svc.start_web(workers=2, threads=8)
        worker = svc.start_worker(processes=2, threads=8)
        scheduler = svc.start_scheduler()
        url = f"{svc.base_url}/webhooks/stripe"
        _post_all(url, [[o] for o in owners])
        svc.wait_for(lambda: svc.scalar("SELECT COUNT(*) FROM customers WHERE email IS NOT NULL") == len(owners),
                     timeout=120, message="the owners to be recorded", watch=[worker])
        _post_all(url, pairs + controls)
        total = len(owners) + 2 * PAIRS + CONTROLS
        svc.wait_for(lambda: svc.scalar("SELECT COUNT(*) FROM events WHERE status IN ('processed', 'ignored')")
                     == total, timeout=240, message="every event processed", watch=[worker])
        time.sleep(6)  # past FIRST_EMAIL_DELAY_SECONDS (5 s)
        svc.wait_for(lambda: svc.scalar("SELECT COUNT(*) FROM emails WHERE status IN ('pending', 'sending')") == 0,
                     timeout=120, message="every email delivered or cancelled", watch=[worker])
        for proc in (web, worker, scheduler):
            assert proc.alive(), f"{proc.name} died:\n{proc.log()[-3000:]}"

        sent = svc.query("SELECT invoice_id, recipient FROM emails WHERE template = 'payment-failed'"
                         " AND status = 'sent'")
        paired = {f"in_pair{i:03d}" for i in range(PAIRS)}
        assert [r for r in sent if r["invoice_id"] in paired] == []
        controls_sent = sorted(r["invoice_id"] for r in sent if r["invoice_id"] not in paired)
        assert controls_sent == [f"in_pair{i:03d}" for i in range(PAIRS, PAIRS + CONTROLS)]
        assert all(r["recipient"].startswith("owner") for r in sent)  # never the snapshot
        states = {r["invoice_id"]: r["state"] for r in svc.query("SELECT invoice_id, state FROM cases")}
        assert {states[i] for i in paired if i in states} <= {"recovered"}  # an older failure never leaves a live case
        outbox = list((svc.workdir / "outbox").glob("*.eml"))
        bodies = [p.read_text(errors="replace") for p in outbox]
        assert sum("X-Dunning-Template: payment-failed" in b for b in bodies) == CONTROLS
    finally:
        svc.close()
