"""RabbitMQ as the broker (BROKER_URL=amqp://...): the same pipeline, and every reader of queue
state (reconciler, /metrics, /readyz, `dunning dlq`, the dashboard) working on it or saying why not.

Each test session gets its own virtual host on the local RabbitMQ (tests.support.services.rabbitmq_url).
"""

from __future__ import annotations

import base64
import time

import dramatiq
import falcon.testing
import pytest

from config.settings import load_settings
from tests.support.services import base_env
from tests.support.cli import run_json
from tests.support.dunning import T0, failed, know_owner
from tests.support.helpers import ADMIN_TOKEN, post_event, wait_until
from tests.support.queues import (
    dead_letter_an_email_and_an_event,
    dlq_list,
    requeue_by_id,
    the_requeued_email_comes_back_and_the_rest_follow,
)
from worker.queue.queue_state import broker_kind, message_counts, waiting


@pytest.fixture
def rabbit(make_runtime):
    return make_runtime(broker="rabbitmq")


def scalar(runtime, sql: str):
    with runtime.db.engine.connect() as conn:
        return conn.exec_driver_sql(sql).scalar()


def web(runtime):
    from worker.web.app import wsgi_app
    return falcon.testing.TestClient(wsgi_app(runtime))


def test_an_amqp_broker_url_selects_rabbitmq_and_redis_url_still_selects_redis(tmp_path):
    from worker.queue.broker import make_broker
    amqp = load_settings(base_env(tmp_path, BROKER_URL="amqp://guest:guest@127.0.0.1:5672/x",
                                  REDIS_URL="redis://127.0.0.1:6379/0"))
    assert amqp.uses_rabbitmq
    broker = make_broker(amqp)
    assert broker_kind(broker) == "rabbitmq"  # built lazily: no connection until first use
    redis_only = load_settings(base_env(tmp_path, REDIS_URL="redis://127.0.0.1:6379/0"))
    assert not redis_only.uses_rabbitmq and broker_kind(make_broker(redis_only)) == "redis"
    from config.settings import ConfigError
    with pytest.raises(ConfigError, match="BROKER_URL"):
        load_settings(base_env(tmp_path, BROKER_URL="kafka://somewhere"))


def test_a_webhook_event_travels_through_rabbitmq_to_a_real_worker_and_is_processed_once(rabbit):
    client = web(rabbit)
    event = failed("in_rmq_1", created=T0, customer="cus_rmq_1", amount=4200)
    know_owner(rabbit, event)  # mail goes to the owner of record only (issue 12): the customer is known first
    assert post_event(client, event).status_code == 200
    assert post_event(client, event).status_code == 200  # a duplicate delivery: stored once, enqueued once
    assert waiting(rabbit.broker, "events") == 1
    worker = dramatiq.Worker(rabbit.broker, queues={"events"}, worker_threads=2, worker_timeout=100)
    worker.start()
    try:
        wait_until(lambda: scalar(rabbit, f"SELECT status FROM events WHERE id = '{event['id']}'") == "processed",
                   timeout=30, message="the event processed")
    finally:
        worker.stop()
    assert scalar(rabbit, "SELECT COUNT(*) FROM emails") == 1
    assert waiting(rabbit.broker, "events") == 0


def test_the_reconciler_sees_a_backlog_on_rabbitmq(rabbit):
    from worker.intake.reconciler import queue_is_empty
    assert queue_is_empty(rabbit.broker)
    rabbit.actors.process_event.send("evt_waiting")
    assert not queue_is_empty(rabbit.broker)


def test_metrics_and_readyz_read_the_rabbitmq_queues(rabbit):
    rabbit.actors.send_email.send("em_1")
    rabbit.actors.send_email.send_with_options(args=("em_2",), delay=3_600_000)
    assert message_counts(rabbit.broker)["emails"] == (1, 1, 0)
    client = web(rabbit)
    body = client.simulate_get("/metrics").text
    assert 'dunning_queue_messages{kind="ready",queue="emails"} 1.0' in body
    assert 'dunning_queue_messages{kind="delayed",queue="emails"} 1.0' in body
    ready = client.simulate_get("/readyz")
    assert ready.status_code == 200 and ready.json["checks"]["broker"] == "ok"


def test_readyz_says_the_broker_is_down_when_rabbitmq_does_not_answer(make_runtime):
    down = make_runtime(broker="stub")
    from worker.queue.broker import make_rabbitmq_broker
    down.broker = make_rabbitmq_broker("amqp://guest:guest@127.0.0.1:1/")
    ready = web(down).simulate_get("/readyz")
    assert ready.status_code == 503 and ready.json["checks"]["broker"].startswith("down")


def test_dlq_lists_and_requeues_rabbitmq_dead_letters_by_id(rabbit):
    email, event = dead_letter_an_email_and_an_event(rabbit)
    wait_until(lambda: message_counts(rabbit.broker)["events"][2] == 1, timeout=10, message="dead-lettered")

    listed = dlq_list()
    assert all(d["dead_at"] for d in listed)
    assert run_json("dlq", "list") == listed  # looking takes nothing away
    requeue_by_id(email)
    assert message_counts(rabbit.broker)["emails"] == (1, 0, 0)
    assert message_counts(rabbit.broker)["events"] == (0, 0, 1)  # the other one stays dead

    the_requeued_email_comes_back_and_the_rest_follow(rabbit, email, event)


def test_the_dashboard_on_rabbitmq_says_where_the_queue_facts_are_instead(rabbit):
    client = web(rabbit)
    assert client.simulate_get("/dashboard/").status_code == 401
    answer = client.simulate_get("/dashboard/", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert answer.status_code == 501
    assert "RabbitMQ" in answer.text and "dunning dlq list" in answer.text and "/metrics" in answer.text


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_dashboard_without_the_slash_redirects_to_the_dashboard_once_authorized(make_runtime, broker):
    from tests.support.services import redis_reachable
    runtime = make_runtime(broker=broker if broker == "rabbitmq" or redis_reachable() else "embedded")
    client = web(runtime)
    assert client.simulate_get("/dashboard").status_code == 401
    token = base64.b64encode(f"ops:{ADMIN_TOKEN}".encode()).decode()
    answer = client.simulate_get("/dashboard", headers={"Authorization": f"Basic {token}"})
    assert answer.status_code == 308 and answer.headers["Location"] == "/dashboard/"
    followed = client.simulate_get("/dashboard/", headers={"Authorization": f"Basic {token}"})
    assert followed.status_code == (200 if broker == "redis" else 501)


def test_a_worker_killed_holding_rabbitmq_messages_gives_them_back_at_once(rabbit):
    """What the Redis broker needs a heartbeat timeout for, RabbitMQ does when the connection drops."""
    rabbit.actors.send_email.send("em_held")
    consumer = rabbit.broker.consume("emails", prefetch=1, timeout=2000)
    held = wait_until(lambda: next(consumer), timeout=10, message="a message held")
    assert held.args == ("em_held",) and waiting(rabbit.broker, "emails") == 0
    consumer.close()  # the connection of a dead worker closes the same way
    started = time.monotonic()
    wait_until(lambda: waiting(rabbit.broker, "emails") == 1, timeout=10, message="the message back")
    assert time.monotonic() - started < 5
