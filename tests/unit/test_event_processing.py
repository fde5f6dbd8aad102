"""Processing stored events: status, retries, failure kept, reconciler, replay, outages."""

from __future__ import annotations

import time
from datetime import timedelta

import falcon.testing

from config.settings import load_settings
from handlers import registry
from tests.support.services import base_env
from tests.support.helpers import drain, make_event, post_event, rows
from worker.queue.broker import make_redis_broker
from worker.pure.clock import utcnow
from worker.intake.reconciler import reconcile
from worker.runtime import setup
from worker.web.app import create_app


def fast_retries(broker, max_retries: int = 2) -> None:
    from dramatiq.middleware import Retries
    for middleware in broker.middleware:
        if isinstance(middleware, Retries):
            middleware.max_retries, middleware.min_backoff, middleware.max_backoff = max_retries, 10, 50


def customer_event(event_id: str, created: int | None = None) -> dict:
    customer = {"id": "cus_proc", "object": "customer", "email": "owner@example.com", "metadata": {}}
    return make_event("customer.created", customer, event_id=event_id, created=created or int(time.time()))


def test_a_failing_handler_leaves_the_event_failed_with_its_error_and_replay_processes_it(runtime, client, monkeypatch):
    def explode(ctx, event):
        raise RuntimeError("the handler broke")

    monkeypatch.setitem(registry.handlers(), "customer.created", explode)
    fast_retries(runtime.broker)
    post_event(client, customer_event("evt_fail_1"))
    drain(runtime)
    [event] = rows(runtime, "events")
    assert event["status"] == "failed"
    assert "the handler broke" in event["last_error"]
    assert event["attempts"] > 1  # retried before being dead-lettered

    monkeypatch.undo()
    from worker.intake.event_store import requeue_events
    assert requeue_events(runtime, None) == ["evt_fail_1"]
    drain(runtime)
    assert rows(runtime, "events")[0]["status"] == "processed"
    assert rows(runtime, "customers")[0]["email"] == "owner@example.com"


def test_the_reconciler_enqueues_events_the_broker_lost(runtime):
    from worker.intake.event_store import parse_envelope, store_event
    import json
    envelope = parse_envelope(json.dumps(customer_event("evt_lost_1")))
    assert store_event(runtime.db, envelope, known_type=True)  # stored, never enqueued
    assert reconcile(runtime, utcnow()) == 0  # too young: maybe still on its way
    assert reconcile(runtime, utcnow() + timedelta(minutes=2)) == 1
    drain(runtime)
    assert rows(runtime, "events")[0]["status"] == "processed"
    assert reconcile(runtime, utcnow() + timedelta(minutes=10)) == 0


def test_processing_twice_is_harmless(runtime):
    from worker.intake.processing import process_event
    client = falcon.testing.TestClient(create_app(runtime))
    post_event(client, customer_event("evt_twice"))
    assert process_event(runtime, "evt_twice") == "processed"
    assert process_event(runtime, "evt_twice") == "processed"
    [event] = rows(runtime, "events")
    assert event["attempts"] == 1


def test_with_the_database_down_the_webhook_answers_503_so_stripe_retries(tmp_path):
    env = base_env(tmp_path, DATABASE_URL="postgresql://postgres@127.0.0.1:1/nothing")
    from worker.queue.broker import make_stub_broker
    rt = setup(load_settings(env), make_stub_broker())
    client = falcon.testing.TestClient(create_app(rt))
    resp = post_event(client, customer_event("evt_db_down"))
    assert resp.status_code == 503
    assert resp.headers.get("Retry-After")
    assert client.simulate_get("/readyz").status_code == 503


def test_with_the_broker_down_the_event_is_stored_and_answered_200(tmp_path, make_runtime):
    rt = make_runtime()
    dead = make_redis_broker("redis://127.0.0.1:1/0", rt.settings.queue_namespace)
    rt_down = setup(rt.settings, dead)
    client = falcon.testing.TestClient(create_app(rt_down))
    resp = post_event(client, customer_event("evt_broker_down"))
    assert resp.status_code == 200
    assert [r["status"] for r in rows(rt_down, "events")] == ["received"]
    assert client.simulate_get("/readyz").status_code == 503
