"""Platform notices: signed, delivered once each, in order per account, retried, never lost."""

from __future__ import annotations

import json
import threading
from collections import Counter
from contextlib import contextmanager
from datetime import datetime, timedelta

import pytest
from sqlalchemy import update

from tests.support.cli import run_json
from tests.support.delivery import in_handler, seed_case, settle_outbox
from tests.support.fake_receivers import free_port, scripted_server
from tests.support.helpers import drain, rows
from worker.delivery import outbox
from worker.pure.clock import to_unix, utcnow
from worker.delivery.notices import MIN_ATTEMPTS, SIGNATURE_HEADER, deliver_account_notices, sweep_notices
from worker.intake.signatures import SignatureError, verify_stripe_signature

SECRET = "whsec_cGxhdGZvcm0tc2VjcmV0LWtleS1mb3ItdGhlLXRlc3Rz"  # whsec_<base64>, as Standard Webhooks writes it
TYPES = ("service.disruption_scheduled", "service.disrupted", "service.restored")
DISRUPT_AT = datetime(2026, 12, 14)


class Receiver:
    """The platform: verifies every signature, answers by a rule, remembers what it acknowledged."""

    def __init__(self, fail_first: int = 0, status: int = 500):
        self.fail_first, self.status = fail_first, status
        self.tries: Counter = Counter()
        self.acknowledged: list[dict] = []
        self.bodies: dict[str, set] = {}
        self.bad_signatures = 0

    def __call__(self, n, request):
        raw = request["raw"].decode()
        try:
            verify_stripe_signature(raw, request["headers"].get(SIGNATURE_HEADER), (SECRET,))
        except SignatureError:
            self.bad_signatures += 1
            return 400, {}, {"error": "bad signature"}
        notice = json.loads(raw)
        self.tries[notice["id"]] += 1
        self.bodies.setdefault(notice["id"], set()).add(raw)
        request["notice"] = notice
        if self.tries[notice["id"]] <= self.fail_first:
            return self.status, {}, {"error": "try again"}
        self.acknowledged.append(notice)
        return 200, {}, {"ok": True}


def notice_case(make_runtime, url: str | None, db: str = "sqlite", **case):
    """A runtime whose notices go to `url` (None: to signed files), one case seeded: (runtime, ids)."""
    env = {"PLATFORM_WEBHOOK_SECRET": SECRET}
    if url:
        env["PLATFORM_WEBHOOK_URL"] = url
    runtime = make_runtime(db=db, **env)
    return runtime, seed_case(runtime, **case)


@contextmanager
def platform_and_case(make_runtime, script, db: str = "sqlite", **case):
    """The platform, answering by `script`, and a runtime sending it notices, one case seeded:
    (platform, runtime, ids)."""
    with scripted_server(script) as platform:
        yield (platform, *notice_case(make_runtime, platform.url, db, **case))


def add(runtime, kind: str, ids: dict, discriminator: str = "1"):
    return in_handler(runtime, lambda ctx: ctx.effects.notice(
         ctx, kind, ids["account_id"], f"notice:{ids['account_id']}:{kind}:{discriminator}",
         case_id=ids["case_id"], invoice_id=ids["invoice_id"], customer_id=ids["customer_id"],
         subscription_id=ids["subscription_id"], disrupt_at=DISRUPT_AT))


def settle(runtime) -> None:
    """Run the senders, then the sweeper ahead of every backoff, until no notice is pending."""
    settle_outbox(runtime, "platform_notices", sweep_notices, rounds=12)


@pytest.fixture(params=["sqlite", "postgres"])
def db_kind(request):
    return request.param


def test_each_notice_is_signed_delivered_once_and_in_order(make_runtime, db_kind):
    receiver = Receiver()
    with platform_and_case(make_runtime, receiver, db_kind,
                           customer_metadata={"app_id": "app_42", "plan": "from-customer"},
                           subscription_metadata={"plan": "from-subscription"}) as (_platform, runtime, ids):
        created = [add(runtime, kind, ids) for kind in TYPES]
        drain(runtime)

    assert receiver.bad_signatures == 0
    assert [n["type"] for n in receiver.acknowledged] == list(TYPES)
    assert [n["id"] for n in receiver.acknowledged] == created
    first = receiver.acknowledged[0]
    assert set(first) == {"id", "type", "created", "customer", "subscription", "invoice", "disrupt_at", "metadata"}
    assert (first["customer"], first["subscription"], first["invoice"]) == ("cus_test_1", "sub_test_1", "in_test_1")
    assert first["disrupt_at"] == to_unix(DISRUPT_AT)
    assert first["metadata"] == {"app_id": "app_42", "plan": "from-subscription"}
    assert [r["seq"] for r in sorted(rows(runtime, "platform_notices"), key=lambda r: r["seq"])] == [1, 2, 3]
    assert {r["status"] for r in rows(runtime, "platform_notices")} == {"sent"}


def test_a_receiver_failing_the_first_two_tries_still_gets_each_notice_once_in_order(make_runtime):
    receiver = Receiver(fail_first=2)
    with platform_and_case(make_runtime, receiver) as (platform, runtime, ids):
        for kind in TYPES:
            add(runtime, kind, ids)
        settle(runtime)

        tried = [r["notice"]["type"] for r in platform.requests if "notice" in r]

    assert receiver.bad_signatures == 0
    assert [n["type"] for n in receiver.acknowledged] == list(TYPES)
    # Never overtaken: every try of a notice comes after the last try of the one before it.
    assert tried == [t for t in TYPES for _ in range(3)]
    assert all(len(bodies) == 1 for bodies in receiver.bodies.values())  # identical bytes on every retry
    for row in rows(runtime, "platform_notices"):
        assert row["status"] == "sent" and row["attempts"] == 3 and "500" in row["last_error"]


def test_a_later_notice_waits_while_an_earlier_one_keeps_failing(make_runtime):
    receiver = Receiver(fail_first=1000)
    with platform_and_case(make_runtime, receiver) as (platform, runtime, ids):
        first = add(runtime, "service.disrupted", ids)
        add(runtime, "service.restored", ids)
        for _ in range(3):
            sweep_notices(runtime, utcnow() + timedelta(days=1))
            drain(runtime)

    assert {r["notice"]["id"] for r in platform.requests} == {first}
    # One try per sweep round: the extra nudges (each add's after-commit message) find it backing off.
    assert receiver.tries[first] == 3
    restored = rows(runtime, "platform_notices", type="service.restored")[0]
    assert restored["attempts"] == 0 and restored["status"] == "pending"


def test_a_receiver_down_leaves_notices_pending_and_visible_then_delivers_each_once(make_runtime, tmp_path):
    port = free_port()
    runtime, ids = notice_case(make_runtime, f"http://127.0.0.1:{port}/hooks/dunning")
    for kind in TYPES:
        add(runtime, kind, ids)
    drain(runtime)
    sweep_notices(runtime, utcnow() + timedelta(days=1))
    drain(runtime)

    pending = run_json("stats")["pending_notices"]
    assert [p["type"] for p in pending] == list(TYPES)
    head = pending[0]
    assert head["attempts"] == 2 and "Connection refused" in head["last_error"]
    assert [p["attempts"] for p in pending[1:]] == [0, 0]

    receiver = Receiver()
    with scripted_server(receiver, port=port):
        settle(runtime)

    assert [n["type"] for n in receiver.acknowledged] == list(TYPES)
    assert run_json("stats")["pending_notices"] == []
    assert run_json("stats")["notices"] == {"sent": 3}


def test_an_acknowledged_notice_is_never_sent_again(make_runtime):
    receiver = Receiver()
    with platform_and_case(make_runtime, receiver) as (platform, runtime, ids):
        add(runtime, "service.disrupted", ids)
        drain(runtime)
        assert deliver_account_notices(runtime, ids["account_id"]) == 0
        assert sweep_notices(runtime, utcnow() + timedelta(days=30)) == 0
        drain(runtime)
    assert len(platform.requests) == 1


def test_concurrent_deliveries_for_one_account_send_each_notice_once(make_runtime, db_kind):
    receiver = Receiver()

    def slow(n, request):
        threading.Event().wait(0.2)
        return receiver(n, request)

    with platform_and_case(make_runtime, slow, db_kind) as (_platform, runtime, ids):
        runtime.db.tables
        with runtime.db.transaction() as conn:  # three notices, committed without their nudges
            from worker.infra.unit_of_work import context_in
            ctx = context_in(runtime=runtime, conn=conn, now=utcnow())
            for kind in TYPES:
                ctx.effects.notice(ctx, kind, ids["account_id"], f"k:{kind}", case_id=ids["case_id"],
                                   invoice_id=ids["invoice_id"], customer_id=ids["customer_id"],
                                   subscription_id=ids["subscription_id"], disrupt_at=None)
        threads = [threading.Thread(target=deliver_account_notices, args=(runtime, ids["account_id"]))
                   for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        settle(runtime)

    assert sorted(receiver.tries.values()) == [1, 1, 1]
    assert [n["type"] for n in receiver.acknowledged] == list(TYPES)


def test_a_worker_that_died_mid_delivery_is_retried_after_its_lease(make_runtime):
    receiver = Receiver()
    with platform_and_case(make_runtime, receiver) as (_platform, runtime, ids):
        add(runtime, "service.disrupted", ids)
        runtime.broker.flush_all()
        notices = runtime.db.table("platform_notices")
        with runtime.db.transaction() as conn:
            conn.execute(update(notices).values(status="sending", attempts=1,
                                                lease_until=utcnow() - timedelta(seconds=1)))
        assert sweep_notices(runtime, utcnow()) == 1
        drain(runtime)
    [row] = rows(runtime, "platform_notices")
    assert row["status"] == "sent" and row["attempts"] == 2
    assert len(receiver.acknowledged) == 1


def test_after_three_days_of_failures_a_notice_is_failed_and_the_next_proceeds(make_runtime):
    def script(n, request):
        notice = json.loads(request["raw"])
        request["notice"] = notice
        return (503, {}, {}) if notice["type"] == "service.disrupted" else (204, {}, b"")

    with platform_and_case(make_runtime, script) as (_platform, runtime, ids):
        add(runtime, "service.disrupted", ids)
        add(runtime, "service.restored", ids)
        drain(runtime)
        notices = runtime.db.table("platform_notices")
        with runtime.db.transaction() as conn:  # as if it had been failing since four days
            conn.execute(update(notices).where(notices.c.type == "service.disrupted").values(
                attempts=MIN_ATTEMPTS, created_at=utcnow() - timedelta(days=4)))
        settle(runtime)

    statuses = {r["type"]: r["status"] for r in rows(runtime, "platform_notices")}
    assert statuses == {"service.disrupted": "failed", "service.restored": "sent"}
    failed = rows(runtime, "platform_notices", type="service.disrupted")[0]
    assert "503" in failed["last_error"]


def test_a_duplicate_notice_adds_nothing_and_an_unknown_type_is_refused(make_runtime):
    runtime, ids = notice_case(make_runtime, None)
    assert add(runtime, "service.disrupted", ids)
    assert add(runtime, "service.disrupted", ids) is None
    assert len(rows(runtime, "platform_notices")) == 1
    with pytest.raises(outbox.UnknownNoticeType):
        add(runtime, "service.exploded", ids)


def test_without_a_url_each_signed_notice_is_written_as_a_json_file(make_runtime):
    runtime, ids = notice_case(make_runtime, None)
    created = [add(runtime, kind, ids) for kind in TYPES]
    drain(runtime)
    drain(runtime)  # a second run rewrites nothing new

    folder = runtime.settings.notice_outbox_dir
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{i}.json" for i in created)
    for notice_id in created:
        record = json.loads((folder / f"{notice_id}.json").read_text())
        verify_stripe_signature(record["body"], record["headers"][SIGNATURE_HEADER], (SECRET,))
        assert json.loads(record["body"])["id"] == notice_id
    assert {r["status"] for r in rows(runtime, "platform_notices")} == {"sent"}


def test_the_sweeper_does_not_nudge_an_account_whose_head_is_backing_off(make_runtime):
    receiver = Receiver(fail_first=1)
    with platform_and_case(make_runtime, receiver) as (_platform, runtime, ids):
        add(runtime, "service.disrupted", ids)
        drain(runtime)  # first try fails: the head backs off
        add(runtime, "service.restored", ids)  # a later notice, due at once
        runtime.broker.flush_all()
        assert sweep_notices(runtime, utcnow()) == 0  # only the head counts, and it is not due
        assert sweep_notices(runtime, utcnow() + timedelta(minutes=5)) == 1
        settle(runtime)
    assert [n["type"] for n in receiver.acknowledged] == ["service.disrupted", "service.restored"]


def test_a_notice_interrupted_again_and_again_for_days_is_failed_and_the_next_proceeds(make_runtime):
    receiver = Receiver()
    with platform_and_case(make_runtime, receiver) as (_platform, runtime, ids):
        stuck = add(runtime, "service.disrupted", ids)
        add(runtime, "service.restored", ids)
        runtime.broker.flush_all()
        notices = runtime.db.table("platform_notices")
        with runtime.db.transaction() as conn:
            conn.execute(update(notices).where(notices.c.id == stuck).values(
                status="sending", attempts=MIN_ATTEMPTS, lease_until=utcnow() - timedelta(minutes=1),
                created_at=utcnow() - timedelta(days=4)))
        assert deliver_account_notices(runtime, ids["account_id"]) == 1
    assert [n["type"] for n in receiver.acknowledged] == ["service.restored"]
    assert rows(runtime, "platform_notices", id=stuck)[0]["status"] == "failed"
