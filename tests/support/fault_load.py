"""The fault suites' workload and its accounting: batches of real-shaped invoice events posted over
HTTP by threads (reposting while the service answers 503, as Stripe does), and the figures counted
at the far ends (events processed, emails and notices accepted by the fakes) that prove 0 lost and
0 duplicated. Used by tests/system/test_crash_and_outage.py and test_kills_across_hosts.py.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest
import requests

from tests.support.fake_receivers import FakePlatform, FakeSendGrid
from tests.support.helpers import STRIPE_DATA, signed_headers
from tests.support.processes import ServiceUnderTest

FAILED_INVOICE = "events/stripe-ruby-mock/invoice.payment_failed.json"


# -- the workload -----------------------------------------------------------------------------------

def _base_invoice() -> dict:
    path = STRIPE_DATA / FAILED_INVOICE
    if not path.is_file():
        pytest.skip("../shared/stripe-data is absent")
    return json.loads(path.read_text())["data"]["object"]


def _event(event_id: str, event_type: str, obj: dict, created: int) -> dict:
    return {"id": event_id, "object": "event", "api_version": "2020-08-27", "created": created,
            "livemode": False, "pending_webhooks": 1, "type": event_type, "data": {"object": obj},
            "request": {"id": None, "idempotency_key": None}}


def invoice_batch(tag: str, invoices: int, base: int) -> list[dict]:
    """4 events per invoice (customer.created, two failed attempts, customer.updated), in order.

    Whatever order they are processed in, each invoice ends with one open case and exactly one
    payment-failed email to its owner: the expected effects do not depend on the interleaving.
    """
    template = _base_invoice()
    events = []
    for i in range(invoices):
        cus, sub, inv = f"cus_{tag}{i:05d}", f"sub_{tag}{i:05d}", f"in_{tag}{i:05d}"
        email = f"owner{i}@{tag}.example.com"
        customer = {"id": cus, "object": "customer", "email": email, "name": f"Owner {i}",
                    "metadata": {"platform_account": f"acct_{i}"},
                    "invoice_settings": {"default_payment_method": None}}
        invoice = copy.deepcopy(template)
        invoice.update(id=inv, customer=cus, subscription=sub, customer_email=email,
                       number=f"{tag.upper()}-{i:05d}", amount_due=1000 + i, amount_remaining=1000 + i,
                       status="open", attempt_count=1, next_payment_attempt=base + 3 * 86400)
        second = copy.deepcopy(invoice)
        second.update(attempt_count=2, next_payment_attempt=base + 5 * 86400)
        events += [
            _event(f"evt_{tag}{i:05d}_c", "customer.created", customer, base + i % 7),
            _event(f"evt_{tag}{i:05d}_f1", "invoice.payment_failed", invoice, base + 10),
            _event(f"evt_{tag}{i:05d}_f2", "invoice.payment_failed", second, base + 20),
            _event(f"evt_{tag}{i:05d}_u", "customer.updated", {**customer, "name": f"Owner {i} (renamed)"},
                   base + 30),
        ]
    return events


class Poster:
    """Posts events over HTTP from a few threads, reposting each until a 2xx (Stripe's retry)."""

    def __init__(self, svc: ServiceUnderTest, events: list[dict], threads: int = 4, give_up_after: float = 240,
                 pause: float = 0.0):
        self.svc, self.events, self.threads, self.give_up_after = svc, events, threads, give_up_after
        self.pause = pause  # seconds between two posts of one thread: stretches the batch over a fault
        self.accepted = 0
        self.statuses: dict[int, int] = {}
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None
        self.local = threading.local()

    def _session(self) -> requests.Session:
        if not hasattr(self.local, "session"):
            self.local.session = requests.Session()
        return self.local.session

    def _post(self, event: dict) -> None:
        body = json.dumps(event)
        url = f"{self.svc.base_url}/webhooks/stripe"
        deadline = time.monotonic() + self.give_up_after
        while True:
            try:
                status = self._session().post(url, data=body.encode(), headers=signed_headers(body),
                                              timeout=30).status_code
            except requests.RequestException:
                status = 0
            with self.lock:
                self.statuses[status] = self.statuses.get(status, 0) + 1
            if 200 <= status < 300:
                with self.lock:
                    self.accepted += 1
                time.sleep(self.pause)
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{event['id']} never accepted")
            time.sleep(0.5)

    def _run(self):
        try:
            with ThreadPoolExecutor(self.threads) as pool:
                list(pool.map(self._post, self.events))
        except BaseException as exc:  # reported by join()
            self.error = exc

    def start(self) -> "Poster":
        self.thread.start()
        return self

    def join(self, timeout: float = 300) -> dict[int, int]:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "posting did not finish"
        if self.error:
            raise self.error
        return self.statuses


def iso(delta: timedelta) -> str:
    return (datetime.now(timezone.utc) + delta).strftime("%Y-%m-%dT%H:%M:%SZ")


def processed_count(svc: ServiceUnderTest) -> int:
    try:
        return svc.scalar("SELECT COUNT(*) FROM events WHERE status IN ('processed', 'ignored')") or 0
    except Exception:
        return 0


def expire_orphaned_leases(svc: ServiceUnderTest, held_for: timedelta = timedelta(seconds=30)) -> int:
    """Let time pass for sends orphaned by a SIGKILL: lapse leases held for longer than `held_for`.

    A worker killed between claiming an email (status sending, lease 5 min) and recording the
    outcome leaves the row to the sweeper once the lease lapses on the real clock, which
    `dunning tick --at` cannot skip. Against fakes that answer in milliseconds, a claim older than
    30 s is an orphan; moving its lease to the past is exactly what 5 minutes of waiting would do.
    """
    from worker.delivery.email_delivery import LEASE as EMAIL_LEASE
    from worker.delivery.notices import LEASE as NOTICE_LEASE
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    lapsed = 0
    for table, lease in (("emails", EMAIL_LEASE), ("platform_notices", NOTICE_LEASE)):
        for row in svc.query(f"SELECT id, lease_until FROM {table} WHERE status = 'sending'"):
            if row["lease_until"] is not None and row["lease_until"] - lease < now - held_for:
                with svc.engine.begin() as conn:
                    from sqlalchemy import text
                    done = conn.execute(text(f"UPDATE {table} SET lease_until = :t WHERE id = :id "
                                             "AND status = 'sending'"),
                                        {"t": now - timedelta(seconds=1), "id": row["id"]}).rowcount
                lapsed += done
                if done:
                    ORPHANED_IDS.setdefault(svc.namespace, set()).add(row["id"])
    return lapsed


def wait_effects_delivered(svc: ServiceUnderTest, sendgrid: FakeSendGrid, platform: FakePlatform | None,
                           watch=(), timeout: float = 150, tick_ahead: timedelta = timedelta(minutes=6)) -> None:
    """Wait until every emails/platform_notices row is sent, ticking ahead to skip retry backoffs."""
    deadline = time.monotonic() + timeout
    while True:
        pending_emails = svc.scalar("SELECT COUNT(*) FROM emails WHERE status <> 'sent'")
        pending_notices = svc.scalar("SELECT COUNT(*) FROM platform_notices WHERE status <> 'sent'")
        if pending_emails == 0 and pending_notices == 0:
            return
        if time.monotonic() > deadline:
            rows = svc.query("SELECT status, attempts, last_error FROM emails WHERE status <> 'sent' LIMIT 5")
            raise AssertionError(f"effects not delivered: {pending_emails} emails, {pending_notices} notices; {rows}")
        for proc in watch:
            assert proc.alive(), f"{proc.name} died:\n{proc.log()[-3000:]}"
        ORPHANED_LEASES[svc.namespace] = ORPHANED_LEASES.get(svc.namespace, 0) + expire_orphaned_leases(svc)
        svc.tick(iso(tick_ahead))  # a retry's backoff (60 s+) is skipped, as an operator would
        time.sleep(2)


ORPHANED_LEASES: dict[str, int] = {}
ORPHANED_IDS: dict[str, set[str]] = {}


def figures(svc: ServiceUnderTest, events: list[dict], sendgrid: FakeSendGrid, platform: FakePlatform | None,
            expected_emails: dict[str, int], expected_notices: dict[str, int] | None,
            crash_window: bool = False, **extra) -> dict:
    """Count what reached the far ends against what was expected; print and return the figures."""
    stored = {r["id"]: r["status"] for r in svc.query("SELECT id, status FROM events")}
    unprocessed = [e["id"] for e in events if stored.get(e["id"]) not in ("processed", "ignored")]
    emails = svc.query("SELECT id, template, invoice_id, status FROM emails")
    by_template: dict[str, int] = {}
    for row in emails:
        by_template[row["template"]] = by_template.get(row["template"], 0) + 1
    accepted_ids = set(sendgrid.accepted)
    email_lost = [r["id"] for r in emails if r["id"] not in accepted_ids]
    missing_email_rows = sum(max(0, n - by_template.get(t, 0)) for t, n in expected_emails.items())
    # The same email accepted twice shows under its id and under its (template, invoice, customer).
    duplicates = max(sum(n - 1 for n in sendgrid.accepted.values() if n > 1),
                     sum(n - 1 for n in sendgrid.by_identity.values() if n > 1))
    # With SIGKILL, a worker can die after SendGrid's 202 and before the row says `sent`: the
    # claim is orphaned and, SendGrid having no idempotency key, the retry sends again. Such
    # re-sends are counted apart (only where a kill orphaned that very email); any other
    # duplicate counts as a duplicate.
    orphaned = ORPHANED_IDS.get(svc.namespace, set())
    resent_after_kill = sum(n - 1 for eid, n in sendgrid.accepted.items() if n > 1 and eid in orphaned)
    if crash_window:
        duplicates -= resent_after_kill
    notice_lost, missing_notice_rows = [], 0
    if platform is not None:
        notices = svc.query("SELECT id, type, status FROM platform_notices")
        notice_lost = [r["id"] for r in notices if r["id"] not in platform.accepted]
        by_type: dict[str, int] = {}
        for row in notices:
            by_type[row["type"]] = by_type.get(row["type"], 0) + 1
        missing_notice_rows = sum(max(0, n - by_type.get(t, 0)) for t, n in (expected_notices or {}).items())
        duplicates += sum(n - 1 for n in platform.accepted.values() if n > 1)
    stuck = svc.scalar("SELECT COUNT(*) FROM events WHERE status IN ('received', 'processing', 'failed')")
    out = {
        "events": len(events), **extra,
        "emails_expected": sum(expected_emails.values()), "emails_delivered": len(accepted_ids),
        "notices_delivered": len(platform.accepted) if platform else 0,
        "duplicates found": duplicates,
        "lost": len(unprocessed) + len(email_lost) + missing_email_rows + len(notice_lost) + missing_notice_rows,
        "stuck": stuck,
        "orphaned_sends_recovered": ORPHANED_LEASES.get(svc.namespace, 0),
        "resent_in_kill_window": resent_after_kill if crash_window else 0,
        "emails_by_template": by_template,
    }
    print("\nFIGURES " + json.dumps(out, sort_keys=True))
    return out


def assert_no_loss_no_duplicate(out: dict, expected_emails: dict[str, int]) -> None:
    assert out["duplicates found"] == 0
    assert out["lost"] == 0
    assert out["stuck"] == 0
    assert out["emails_by_template"] == expected_emails


# Every scenario that does not restart the broker itself runs on Redis and on RabbitMQ (BROKER_URL).
BROKERS = ["redis", "rabbitmq"]


def service_env(sendgrid: FakeSendGrid, platform: FakePlatform) -> dict:
    return {"SENDGRID_API_KEY": sendgrid.api_key, "SENDGRID_API_HOST": sendgrid.url,
            "EMAIL_FROM": "Billing <billing@example.com>", "PLATFORM_WEBHOOK_URL": f"{platform.url}/notices",
            "PLATFORM_WEBHOOK_SECRET": platform.secret, "SCHEDULER_INTERVAL": "2"}
