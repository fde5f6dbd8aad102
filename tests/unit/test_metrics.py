"""GET /metrics: Prometheus text that parses, with counters that move as a case goes from failure to recovery."""

from __future__ import annotations

from datetime import timedelta

import falcon.testing
import pytest

from tests.support.dunning import DAY, T0, failed, paid, tick
from tests.support.helpers import drain, post_event
from worker.pure.clock import utcnow
from worker.pure.ids import new_id
from tests.support.metrics import scrape, total, value


def insert(runtime, table, **values):
    t = runtime.db.table(table)  # reflect before the write lock is taken (SQLite)
    with runtime.db.transaction() as conn:
        conn.execute(t.insert().values(**values))


@pytest.fixture(params=["sqlite", "postgres"])
def any_runtime(make_runtime, request):
    """conftest's any_runtime, with the domain figures computed at every scrape (no snapshot cache:
    these tests watch counters move between two scrapes) and the amounts published."""
    return make_runtime(db=request.param, METRICS_REFRESH_SECONDS="0", METRICS_AMOUNTS="1")


@pytest.fixture
def metrics_client(any_runtime):
    from worker.web.app import create_app
    return falcon.testing.TestClient(create_app(any_runtime))


def test_metrics_parse_and_counters_move_from_failure_to_recovery(any_runtime, metrics_client, stripe_data):
    runtime, client = any_runtime, metrics_client
    before = scrape(client)
    first_failure = failed("in_metrics_1", created=T0, customer="cus_metrics", subscription="sub_metrics",
                           amount=4200)
    from tests.support.dunning import know_owner
    know_owner(runtime, first_failure)  # the owner of record (issue 12: never the invoice's snapshot)
    before = scrape(client)
    assert post_event(client, first_failure).status_code == 200
    assert post_event(client, first_failure).status_code == 200  # a duplicate delivery
    drain(runtime)

    failing = scrape(client)
    def moved(name, **labels):
        return value(failing, name, **labels) - value(before, name, **labels)
    assert moved("dunning_webhook_deliveries_total", event_type="invoice.payment_failed", outcome="new") == 1
    assert moved("dunning_webhook_deliveries_total", event_type="invoice.payment_failed", outcome="duplicate") == 1
    assert total(failing, "dunning_webhook_duration_seconds_count") - \
        total(before, "dunning_webhook_duration_seconds_count") == 2
    assert value(failing, "dunning_events_received_total", type="invoice.payment_failed", source="webhook") == 1
    assert value(failing, "dunning_events_processed_total", type="invoice.payment_failed") == 1
    assert value(failing, "dunning_events", type="invoice.payment_failed", status="processed") == 1
    assert value(failing, "dunning_cases", state="failing") == 1
    assert sum(v for (n, labels), v in failing.items()
               if n == "dunning_case_transitions_total" and ("to_state", "failing") in labels) == 1
    assert value(failing, "dunning_emails_sent_total", template="payment-failed") == 1
    assert value(failing, "dunning_outbox_oldest_pending_age_seconds", outbox="emails") == 0
    assert value(failing, "dunning_cases_opened_30d") == 1
    assert value(failing, "dunning_recovery_30d_ratio") == 0
    assert value(failing, "dunning_recovered_cases_total", currency="usd") == 0
    # Dramatiq's own message metrics come through the same endpoint.
    assert moved("dramatiq_messages_total", queue_name="events", actor_name="process_event") == 1
    # Its email was delivered in the event's own thread: this worker consumes the emails queue too
    # (worker.queue.consumption), so no send_email message went through the broker.
    assert moved("dramatiq_messages_total", queue_name="emails", actor_name="send_email") == 0

    tick(runtime, T0 + 8 * DAY)  # reminder, disruption warning and its platform notice
    drain(runtime)
    assert post_event(client, paid("in_metrics_1", created=T0 + 9 * DAY, customer="cus_metrics",
                                   subscription="sub_metrics", amount=4200)).status_code == 200
    drain(runtime)

    recovered = scrape(client)
    assert value(recovered, "dunning_events_processed_total", type="invoice.paid") == 1
    assert value(recovered, "dunning_cases", state="failing") == 0
    assert value(recovered, "dunning_cases", state="recovered") == 1
    assert sum(v for (n, labels), v in recovered.items()
               if n == "dunning_case_transitions_total" and ("to_state", "recovered") in labels) == 1
    for template in ("payment-failed", "reminder", "disruption-warning", "payment-received"):
        assert value(recovered, "dunning_emails_sent_total", template=template) == 1, template
    assert value(recovered, "dunning_platform_notices_delivered_total", type="service.disruption_scheduled") == 1
    assert value(recovered, "dunning_outbox_oldest_pending_age_seconds", outbox="notices") == 0
    assert value(recovered, "dunning_recovered_cases_total", currency="usd") == 1
    assert value(recovered, "dunning_recovered_amount_total", currency="usd") == 4200
    assert value(recovered, "dunning_recovery_30d_ratio") == 1.0


def test_outcomes_of_links_and_card_retries_are_counted(any_runtime, metrics_client):
    runtime, client = any_runtime, metrics_client
    now = utcnow()
    insert(runtime, "payment_links", id=new_id("plr"), invoice_id="in_1", customer_id="cus_1",
           requested_at=now, status="created", amount=1000, currency="jpy", created_at=now)
    insert(runtime, "payment_links", id=new_id("plr"), invoice_id="in_1", customer_id="cus_1",
           requested_at=now, status="failed")
    for n, status in enumerate(("succeeded", "declined", "declined")):
        insert(runtime, "card_retries", id=new_id("cr"), dedupe_key=f"in_1:pm_{n}", invoice_id="in_1",
               customer_id="cus_1", payment_method_id=f"pm_{n}", status=status, created_at=now)
    insert(runtime, "platform_notices", id=new_id("ntc"), dedupe_key="notice:a:service.disrupted:1",
           type="service.disrupted", account_id="a", seq=1, body="{}", status="pending",
           next_attempt_at=now, created_at=now - timedelta(minutes=10))

    insert(runtime, "emails", id=new_id("em"), dedupe_key="case:dc_x:step:0", template="payment-failed",
           recipient="owner@example.com", subject="s", body_text="t", body_html="<p>t</p>", status="pending",
           next_attempt_at=now, created_at=now - timedelta(seconds=90))

    samples = scrape(client)
    assert value(samples, "dunning_outbox_oldest_pending_age_seconds", outbox="emails") >= 90
    assert value(samples, "dunning_emails", template="payment-failed", status="pending") == 1
    assert value(samples, "dunning_payment_links_created_total", currency="jpy") == 1
    assert value(samples, "dunning_payment_links", status="failed") == 1
    assert value(samples, "dunning_card_retries_total", outcome="succeeded") == 1
    assert value(samples, "dunning_card_retries_total", outcome="declined") == 2
    assert value(samples, "dunning_platform_notices", type="service.disrupted", status="pending") == 1
    assert value(samples, "dunning_outbox_oldest_pending_age_seconds", outbox="notices") >= 600
    assert (("dunning_recovery_30d_ratio", ()) not in samples)  # nothing opened: no rate, not a fake 0


def test_metrics_directory_is_under_var_and_shared_by_every_process(runtime):
    import os

    from worker.observe import metrics
    path = metrics.current_dir()
    assert path is not None and path.is_dir()
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(path)
    assert path.name == "prometheus"
    # The launcher empties it per run and gives it to every child process.
    fresh = metrics.reset_multiproc_dir(runtime.settings)
    assert fresh == runtime.settings.var_dir / "prometheus" and not any(fresh.iterdir())


def test_broker_middleware_has_no_exposition_server_and_is_added_once(runtime):
    from dramatiq.middleware.prometheus import Prometheus

    from worker.observe import metrics
    installed = [m for m in runtime.broker.middleware if isinstance(m, Prometheus)]
    assert len(installed) == 1 and installed[0].forks == []
    metrics.install_broker_middleware(runtime.broker, runtime.settings)
    assert len([m for m in runtime.broker.middleware if isinstance(m, Prometheus)]) == 1


def test_a_database_outage_still_serves_metrics_and_says_the_database_is_down(runtime):
    from prometheus_client.core import CollectorRegistry
    from prometheus_client.exposition import generate_latest

    from worker.infra.db import Database
    from worker.observe.metrics import DomainCollector
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DomainCollector(Database("postgresql+psycopg://nobody@127.0.0.1:1/none")))
    text = generate_latest(registry).decode()
    assert "dunning_database_up 0.0" in text and "dunning_cases" not in text
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DomainCollector(runtime.db))
    assert "dunning_database_up 1.0" in generate_latest(registry).decode()
