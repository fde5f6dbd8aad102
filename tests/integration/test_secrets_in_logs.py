"""No secret, token or full email address in any log line; no card data beyond brand/last4/expiry stored.

A full flow runs on the real processes (web, worker, scheduler, CLI ticks) with every secret
set to a recognisable value and with wrong credentials thrown at the admin endpoints; every line
each process wrote (structlog JSON and stdlib: gunicorn, dramatiq) is scanned. The same flow runs
in-process with the output captured. Then every text column of every table is scanned for a
full card number or a CVC.
"""

from __future__ import annotations

import base64
import json
import re
import time
from datetime import datetime, timedelta, timezone

import falcon.testing
import pytest
import requests
from sqlalchemy import inspect, text

from tests.support.fake_receivers import FakePlatform, FakeSendGrid
from tests.support.helpers import ADMIN_TOKEN, WEBHOOK_SECRET, drain, make_event, post_event, signed_headers
from worker.web.app import create_app

OWNER_EMAIL = "ada.lovelace@example.org"
PAN = "4000056655665556"
CVC = "737"
STRIPE_KEY = "sk_test_SECRETstripekey0123456789"
DASHBOARD_PASSWORD = "dashboard-pass-SECRET-42"
WRONG_TOKEN = "an-almost-admin-token-SECRET-99"
FULL_EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}")
# A run of 13-19 digits not inside a word: the hex suffix of a random id (em_01a2...3693045108387fd...)
# holds such a run now and then, and one that passed the Luhn check failed a CI run.
DIGIT_RUN = re.compile(r"(?<![0-9A-Za-z])\d{13,19}(?![0-9A-Za-z])")


def luhn_ok(number: str) -> bool:
    total, parity = 0, len(number) % 2
    for i, ch in enumerate(number):
        d = int(ch)
        if i % 2 == parity:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def flow_events(now: int) -> list[dict]:
    customer = {"id": "cus_sec1", "object": "customer", "email": OWNER_EMAIL, "name": "Ada Lovelace",
                "metadata": {"owner_email": OWNER_EMAIL}, "invoice_settings": {"default_payment_method": None}}
    invoice = {"id": "in_sec1", "object": "invoice", "customer": "cus_sec1", "status": "open", "currency": "usd",
               "amount_due": 4200, "amount_remaining": 4200, "attempt_count": 1, "number": "SEC-0001",
               "customer_email": OWNER_EMAIL, "customer_name": "Ada Lovelace",
               "next_payment_attempt": now + 3 * 86400, "subscription": "sub_sec1",
               "charge": {"id": "ch_sec1", "object": "charge", "failure_code": "card_declined",
                          "failure_message": "Your card was declined.",
                          "payment_method_details": {"type": "card", "card": {
                              "brand": "visa", "last4": PAN[-4:], "exp_month": 4, "exp_year": 2031,
                              "funding": "credit", "fingerprint": "fpSEC1"}}}}
    # A payment method whose card hash carries what Stripe never sends (a full number and a CVC):
    # only brand, last four, expiry, funding and fingerprint may be kept.
    pm = {"id": "pm_sec1", "object": "payment_method", "type": "card", "customer": "cus_sec1",
          "billing_details": {"email": OWNER_EMAIL, "name": "Ada Lovelace", "phone": "+44 20 7946 0000"},
          "card": {"brand": "visa", "last4": PAN[-4:], "exp_month": 4, "exp_year": 2031, "funding": "credit",
                   "fingerprint": "fpSEC2", "number": PAN, "cvc": CVC}}
    paid = {**invoice, "status": "paid", "amount_paid": 4200, "amount_remaining": 0}
    return [
        make_event("customer.created", customer, event_id="evt_sec_1", created=now - 50),
        make_event("invoice.payment_failed", invoice, event_id="evt_sec_2", created=now - 40),
        make_event("payment_method.attached", pm, event_id="evt_sec_3", created=now - 30),
    ], make_event("invoice.paid", paid, event_id="evt_sec_4", created=now + 9 * 86400)


def secrets_of(env: dict) -> list[str]:
    return [v for v in (WEBHOOK_SECRET, ADMIN_TOKEN, STRIPE_KEY, DASHBOARD_PASSWORD, WRONG_TOKEN,
                        env.get("SENDGRID_API_KEY"), env.get("PLATFORM_WEBHOOK_SECRET")) if v]


def scan_lines(lines: list[str], secrets: list[str]) -> list[str]:
    """Every offending line, with what it leaks."""
    found = []
    for line in lines:
        for secret in secrets:
            if secret in line:
                found.append(f"secret {secret[:6]}...: {line[:300]}")
        for match in FULL_EMAIL.findall(line):
            found.append(f"email {match}: {line[:300]}")
        for run in DIGIT_RUN.findall(line):
            if luhn_ok(run) and run.startswith(("3", "4", "5", "6")):
                found.append(f"card number: {line[:300]}")
    return found


def scan_tables(connect, skip: set[tuple[str, str]] = frozenset()) -> list[str]:
    """Every text column of every table: a full PAN or a CVC is never stored."""
    found = []
    with connect() as conn:
        insp = inspect(conn)
        for table in insp.get_table_names():
            for column in insp.get_columns(table):
                if (table, column["name"]) in skip:
                    continue
                if "CHAR" not in str(column["type"]).upper() and "TEXT" not in str(column["type"]).upper():
                    continue
                for (value,) in conn.execute(text(f'SELECT "{column["name"]}" FROM "{table}"')):
                    if not isinstance(value, str):
                        continue
                    if PAN in value or any(luhn_ok(r) and r.startswith(("3", "4", "5", "6"))
                                           for r in DIGIT_RUN.findall(value)):
                        found.append(f"{table}.{column['name']}: full card number")
                    if re.search(r'"cvc"\s*:|\bcvc\b', value, re.I):
                        found.append(f"{table}.{column['name']}: cvc")
    return found


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_full_flow_on_real_processes_logs_no_secret_token_or_email_and_stores_no_card_data(tmp_path):
    from tests.support.processes import build_service
    sendgrid = FakeSendGrid(api_key="SG.SECRET-sendgrid-key-0123456789").start()
    platform = FakePlatform(secret="platform-SECRET-signing-key-987").start()
    env = {"SENDGRID_API_KEY": sendgrid.api_key, "SENDGRID_API_HOST": sendgrid.url,
           "PLATFORM_WEBHOOK_URL": f"{platform.url}/notices", "PLATFORM_WEBHOOK_SECRET": platform.secret,
           "STRIPE_API_KEY": STRIPE_KEY, "STRIPE_API_BASE": "http://127.0.0.1:9",  # Stripe unreachable
           "DASHBOARD_USER": "ops", "DASHBOARD_PASSWORD": DASHBOARD_PASSWORD, "LOG_LEVEL": "DEBUG"}
    svc = build_service(tmp_path, db="postgres", broker="redis", **env)
    try:
        web = svc.start_web()
        worker = svc.start_worker(processes=1, threads=4)
        scheduler = svc.start_scheduler()
        now = int(time.time())
        first, paid = flow_events(now)
        for event in first:
            assert svc.post_event(event).status_code == 200
        svc.wait_all_events_done(3, timeout=60, watch=[web, worker])
        # Wrong and right credentials at the admin endpoints; a forged webhook signature.
        admin = f"{svc.base_url}/payment-links"
        for auth in (f"Bearer {WRONG_TOKEN}", f"Basic {base64.b64encode(f'ops:{WRONG_TOKEN}'.encode()).decode()}",
                     f"Bearer {ADMIN_TOKEN}"):
            note = "customer asked by phone" if ADMIN_TOKEN in auth else f"for {OWNER_EMAIL}"
            requests.post(admin, json={"invoice": "in_sec1", "note": note},
                          headers={"Authorization": auth}, timeout=10)
        for auth in (f"Basic {base64.b64encode(f'ops:{DASHBOARD_PASSWORD}'.encode()).decode()}",
                     f"Basic {base64.b64encode(f'ops:{WRONG_TOKEN}'.encode()).decode()}"):
            requests.get(f"{svc.base_url}/dashboard/", headers={"Authorization": auth}, timeout=10)
        body = json.dumps(first[0])
        requests.post(f"{svc.base_url}/webhooks/stripe", data=body,
                      headers=signed_headers(body, secret="whsec_forger"), timeout=10)
        # Time passes: the reminder, the disruption warning and its notice; then the payment. (Two
        # ticks: one late tick at day 8 alone would catch up with the warning only, issue 12.)
        for days in (4, 8):
            at = (datetime.now(timezone.utc) + timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")
            svc.tick(at)
            svc.wait_for(lambda: svc.scalar("SELECT COUNT(*) FROM cases WHERE next_step_at <= :at",
                                            at=datetime.fromisoformat(at[:-1])) == 0, timeout=60,
                         message="the due steps to run", watch=[worker])
        svc.wait_for(lambda: svc.scalar("SELECT COUNT(*) FROM emails WHERE status = 'sent'") >= 3, timeout=60,
                     message="three emails sent", watch=[worker])
        assert svc.post_event(paid).status_code == 200
        svc.wait_all_events_done(4, timeout=60, watch=[web, worker])
        svc.wait_for(lambda: svc.scalar("SELECT COUNT(*) FROM emails WHERE template = 'payment-received' "
                                        "AND status = 'sent'") == 1, timeout=60, message="payment-received")
        svc.wait_for(lambda: len(platform.accepted) >= 1, timeout=60, message="a notice delivered")
        time.sleep(2)
    finally:
        svc.close()
        sendgrid.stop()
        platform.stop()

    lines = []
    for path in sorted(svc.log_dir.iterdir()):
        if path.name == "cli.log":  # command output (stats, events show) is not a log
            continue
        lines += path.read_text(errors="replace").splitlines()
    assert len(lines) > 20, "the processes did log"
    assert any("email.sent" in line for line in lines)
    assert any("payment_link" in line and "unauthorized" in line for line in lines)
    leaks = scan_lines(lines, secrets_of(env))
    assert leaks == [], "\n".join(leaks[:20])
    print(f"\nscanned {len(lines)} log lines from {len(list(svc.log_dir.iterdir()))} files: 0 leaks")


def test_the_same_flow_in_process_logs_nothing_secret_and_stores_no_card_data(make_runtime, capfd):
    runtime = make_runtime(STRIPE_API_KEY=STRIPE_KEY, DASHBOARD_USER="ops", DASHBOARD_PASSWORD=DASHBOARD_PASSWORD,
                           LOG_LEVEL="DEBUG")
    client = falcon.testing.TestClient(create_app(runtime))
    now = int(time.time())
    first, paid = flow_events(now)
    for event in first:
        assert post_event(client, event).status_code == 200
    client.simulate_post("/payment-links", json={"invoice": "in_sec1"},
                         headers={"Authorization": f"Bearer {WRONG_TOKEN}"})
    post_event(client, first[0], secret="whsec_forger")
    drain(runtime)
    from worker.scheduling.scheduler import run_pass
    run_pass(runtime, datetime.now(timezone.utc).replace(tzinfo=None) + timedelta(days=8))
    drain(runtime)
    assert post_event(client, paid).status_code == 200
    drain(runtime)
    captured = capfd.readouterr()
    lines = (captured.out + captured.err).splitlines()
    assert len(lines) > 10
    leaks = scan_lines(lines, secrets_of({}))
    assert leaks == [], "\n".join(leaks[:20])

    # Card data: the raw event is kept as Stripe signed it (events.payload; Stripe itself never
    # sends a full number), but nothing derived from it keeps more than brand/last4/expiry.
    leaks = scan_tables(runtime.db.engine.connect, skip={("events", "payload")})
    assert leaks == [], leaks
    cards = [dict(r) for r in runtime.db.engine.connect().execute(text("SELECT * FROM cards")).mappings()]
    assert cards and all(c["last4"] == PAN[-4:] for c in cards)


@pytest.mark.parametrize("value, should_flag", [
    (PAN, True), ("4242424242424242", True), ("1796012318", False), ("in_000000000000000000000000", False),
    ("card 4000 0566 5566 5556", False),
])
def test_the_card_number_detector_itself_finds_what_it_must(value, should_flag):
    assert bool(scan_lines([value], [])) == should_flag
