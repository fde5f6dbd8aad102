"""The counts behind /metrics: always equal to the tables' own GROUP BY, and read without scanning them.

metric_counts is moved by triggers in the statement that writes a counted row; these tests run
real work (webhooks twice, failures and replays, the schedule, recovery, a rollback, an erasure,
a prune, concurrent writers, bulk statements) and compare the stored counts with the tables
grouped (worker.observe.metric_counts.expected_counts), then check that a scrape's statements never
scan events, cases or the outboxes, and are the same statements at 10 rows and at 40,000.
"""

from __future__ import annotations

import re
import threading
from datetime import timedelta

import falcon.testing
import pytest
from sqlalchemy import event as sa_event
from sqlalchemy import text

from handlers import registry
from tests.support.dunning import DAY, T0, failed, know_owner, paid, tick
from tests.support.helpers import drain, make_event, post_event, rows
from worker.pure.clock import utcnow
from worker.observe.metric_counts import expected_counts, stored_counts
from worker.web.app import create_app

COUNTED = ("events", "cases", "case_transitions", "emails", "platform_notices", "payment_links", "card_retries")


@pytest.fixture(params=["sqlite", "postgres"])
def counted_runtime(make_runtime, request):
    return make_runtime(db=request.param, METRICS_REFRESH_SECONDS="0", METRICS_AMOUNTS="1")


def counts_of(runtime) -> tuple[dict, dict]:
    with runtime.db.engine.connect() as conn:
        return stored_counts(conn), expected_counts(conn)


def assert_counts_match(runtime, when: str) -> dict:
    stored, expected = counts_of(runtime)
    assert stored == expected, f"{when}: metric_counts drifted from the tables"
    return stored


def count(stored: dict, family: str, *labels: str) -> int:
    return sum(n for (fam, *have), (n, _) in stored.items() if fam == family and have[:len(labels)] == list(labels))


def fast_retries(broker) -> None:
    from dramatiq.middleware import Retries
    for middleware in broker.middleware:
        if isinstance(middleware, Retries):
            middleware.max_retries, middleware.min_backoff, middleware.max_backoff = 1, 10, 50


def test_counts_equal_the_tables_through_duplicates_failures_replays_steps_recovery_erasure_and_prune(
        counted_runtime, monkeypatch):
    runtime = counted_runtime
    client = falcon.testing.TestClient(create_app(runtime))
    failure = failed("in_counts_1", created=T0, customer="cus_counts", subscription="sub_counts", amount=4200)
    know_owner(runtime, failure)
    assert post_event(client, failure).status_code == 200
    assert post_event(client, failure).status_code == 200  # a duplicate delivery: stored once, counted once
    drain(runtime)
    stored = assert_counts_match(runtime, "after a failure delivered twice")
    assert count(stored, "events", "invoice.payment_failed") == 1
    assert count(stored, "cases", "failing") == 1

    from worker.intake.processing import process_event
    process_event(runtime, failure["id"])  # processed again (a redelivered message): nothing moves
    assert counts_of(runtime)[0] == stored

    def explode(ctx, event):
        raise RuntimeError("the handler broke")
    monkeypatch.setitem(registry.handlers(), "customer.updated", explode)
    fast_retries(runtime.broker)
    customer = {"id": "cus_counts", "object": "customer", "email": "owner@example.com", "metadata": {}}
    assert post_event(client, make_event("customer.updated", customer, event_id="evt_counts_broken",
                                         created=T0 + 60)).status_code == 200
    drain(runtime)
    stored = assert_counts_match(runtime, "after a handler failed and was retried")
    assert count(stored, "events", "customer.updated", "webhook", "failed") == 1
    monkeypatch.undo()
    from worker.intake.event_store import requeue_events
    assert requeue_events(runtime, None) == ["evt_counts_broken"]  # the replay
    drain(runtime)
    stored = assert_counts_match(runtime, "after the replay")
    assert count(stored, "events", "customer.updated", "webhook", "failed") == 0

    tick(runtime, T0 + 8 * DAY)  # reminder, warning, disruption_scheduled notice
    drain(runtime)
    assert post_event(client, paid("in_counts_1", created=T0 + 9 * DAY, customer="cus_counts",
                                   subscription="sub_counts", amount=4200)).status_code == 200
    drain(runtime)
    stored = assert_counts_match(runtime, "after the schedule and the recovery")
    assert count(stored, "cases", "recovered") == 1 and count(stored, "cases_recovered", "usd") == 1
    assert stored[("cases_recovered", "usd", "", "", "")][1] == 4200
    assert count(stored, "emails") >= 3 and count(stored, "case_transitions") >= 2

    events, cases = runtime.db.table("events"), runtime.db.table("cases")
    with pytest.raises(RuntimeError, match="crash"):  # a transaction that dies half-way moves nothing
        with runtime.db.transaction() as conn:
            conn.execute(events.insert().values(id="evt_counts_lost", type="invoice.paid", created=1, payload="{}",
                                                received_at=utcnow()))
            conn.execute(cases.update().values(state="disrupted"))
            raise RuntimeError("crash")
    assert counts_of(runtime)[0] == stored

    from worker.privacy.erasure import erase_customer
    erase_customer(runtime, "cus_counts", requested_by="test", reason="a test erasure")
    assert_counts_match(runtime, "after an erasure")

    from worker.privacy.retention import prune
    removed = prune(runtime, utcnow() + timedelta(days=420))
    assert removed.get("events", 0) > 0 and removed.get("cases", 0) == 1
    stored = assert_counts_match(runtime, "after a prune deleted the closed case and old events")
    assert count(stored, "cases") == 0


def test_concurrent_writers_keep_the_counts_exact(make_runtime):
    """Eight connections at once inserting (with duplicates), moving and rolling back events."""
    runtime = make_runtime(db="postgres")
    db, events = runtime.db, runtime.db.table("events")
    errors: list[BaseException] = []

    def writer(worker: int) -> None:
        try:
            for i in range(40):
                event_id = f"evt_conc_{i % 25}_{worker % 4}"  # two writers share each id: duplicates
                with db.transaction() as conn:
                    db.insert_new(conn, events, {"id": event_id, "type": f"type.{i % 3}", "created": i,
                                                 "payload": "{}", "received_at": utcnow()}, "id")
                with db.transaction() as conn:
                    conn.execute(events.update().where(events.c.id == event_id, events.c.status == "received")
                                 .values(status="processed", processed_at=utcnow()))
                try:
                    with db.transaction() as conn:
                        conn.execute(events.update().where(events.c.id == event_id).values(status="failed"))
                        raise LookupError("rolled back")
                except LookupError:
                    pass
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    stored = assert_counts_match(runtime, "after concurrent writers")
    assert count(stored, "events") == 100 and count(stored, "events", "type.0") > 0
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT count(DISTINCT shard) FROM metric_counts")).scalar() > 1


# -- what a scrape costs -------------------------------------------------------------------------
def refresh_statements(runtime) -> list[tuple[str, object]]:
    """The statements (and parameters) one read of the domain figures sends to the database."""
    from worker.observe.metrics import DomainCollector
    runtime.db.tables  # reflected before capturing
    seen: list[tuple[str, object]] = []

    def on_execute(conn, cursor, statement, parameters, context, executemany):
        seen.append((statement, parameters))
    sa_event.listen(runtime.db.engine, "before_cursor_execute", on_execute)
    try:
        families = list(DomainCollector(runtime.db).collect())
    finally:
        sa_event.remove(runtime.db.engine, "before_cursor_execute", on_execute)
    assert any(f.name == "dunning_database_up" and f.samples[0].value == 1 for f in families)
    return seen


def full_scans(runtime, statements) -> list[str]:
    """Statements whose plan reads a whole counted table (PostgreSQL: Seq Scan; SQLite: SCAN)."""
    pattern = (r"\bSCAN (%s)\b" if runtime.db.is_sqlite else r"Seq Scan on (%s)\b") % "|".join(COUNTED)
    explain = "EXPLAIN QUERY PLAN " if runtime.db.is_sqlite else "EXPLAIN "
    found = []
    with runtime.db.engine.connect() as conn:
        for statement, parameters in statements:
            plan = "\n".join(" ".join(map(str, row)) for row in conn.exec_driver_sql(explain + statement, parameters))
            if re.search(pattern, plan):
                found.append(f"{' '.join(statement.split())[:200]}\n{plan}")
    return found


SEED_EVENTS = """
INSERT INTO events (id, type, created, payload, source, received_at, status, processed_at, failed_transient)
SELECT 'evt_seed_' || g, CASE WHEN g % 3 = 0 THEN 'invoice.paid' ELSE 'invoice.payment_failed' END, g, '{}',
       CASE WHEN g % 10 = 0 THEN 'backfill' ELSE 'webhook' END, :now, 'processed', :now, FALSE
FROM ({series}) AS s"""
SEED_CASES = """
INSERT INTO cases (id, invoice_id, customer_id, account_id, state, schedule, currency, amount_due, first_failed_at,
                   opened_at, updated_at, recovered_amount)
SELECT 'dc_seed_' || g, 'in_seed_' || g, 'cus_seed', 'cus_seed',
       CASE WHEN g % 4 = 0 THEN 'recovered' ELSE 'failing' END, 'default', 'usd', 1000, :now, :now, :now,
       CASE WHEN g % 8 = 0 THEN 500 END
FROM ({series}) AS s"""
SEED_EMAILS = """
INSERT INTO emails (id, dedupe_key, template, recipient, subject, body_text, body_html, status, next_attempt_at,
                    created_at)
SELECT 'em_seed_' || g, 'seed:' || g, 'reminder', 'owner@example.com', 's', 't', 'h',
       CASE WHEN g % 5 = 0 THEN 'pending' ELSE 'sent' END, :now, :now
FROM ({series}) AS s"""

SEED_NOTICES = """
INSERT INTO platform_notices (id, dedupe_key, type, account_id, seq, body, status, next_attempt_at, created_at)
SELECT 'ntc_seed_' || g, 'seed:' || g, 'service.disrupted', 'sub_seed', g, '{}',
       CASE WHEN g % 7 = 0 THEN 'pending' ELSE 'sent' END, :now, :now
FROM ({series}) AS s"""


def series(runtime, n: int) -> str:
    if runtime.db.is_sqlite:
        return f"WITH RECURSIVE c(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM c WHERE g < {n}) SELECT g FROM c"
    return f"SELECT generate_series(1, {n}) AS g"


def test_a_scrape_reads_the_counts_not_the_tables_and_costs_the_same_at_10_rows_and_40000(counted_runtime):
    runtime = counted_runtime
    now = utcnow()
    small = refresh_statements(runtime)
    with runtime.db.transaction() as conn:  # bulk statements: one counted upsert per label set
        conn.execute(text(SEED_EVENTS.replace("{series}", series(runtime, 40_000))), {"now": now})
        conn.execute(text(SEED_CASES.replace("{series}", series(runtime, 4_000))), {"now": now})
        conn.execute(text(SEED_EMAILS.replace("{series}", series(runtime, 4_000))), {"now": now})
        conn.execute(text(SEED_NOTICES.replace("{series}", series(runtime, 4_000))), {"now": now})
        conn.execute(text("UPDATE events SET status = 'failed', processed_at = NULL WHERE type = 'invoice.paid' "
                          "AND source = 'backfill'"))
        conn.execute(text("DELETE FROM emails WHERE status = 'pending' AND id LIKE 'em_seed_1%'"))
        conn.execute(text("ANALYZE"))
    stored = assert_counts_match(runtime, "after bulk statements")
    assert count(stored, "events") == 40_000 and count(stored, "events", "invoice.paid", "backfill", "failed") > 0

    large = refresh_statements(runtime)
    assert [s for s, _ in large] == [s for s, _ in small], "a scrape's statements depend on the data"
    assert not full_scans(runtime, large), "a scrape scans a counted table:\n" + "\n".join(full_scans(runtime, large))
    grouped = [s for s, _ in large if "GROUP BY" in s.upper()]
    assert grouped and all("FROM metric_counts" in s for s in grouped)
    with runtime.db.engine.connect() as conn:
        held = conn.execute(text("SELECT count(*) FROM metric_counts")).scalar()
    assert held < 100, "metric_counts grows with the rows counted, not with their label sets"


def test_the_snapshot_scrape_publishes_the_counted_figures(counted_runtime):
    """The same figures through GET /metrics, after rows written by plain SQL (no service code)."""
    from tests.support.metrics import scrape, value
    runtime = counted_runtime
    now = utcnow()
    with runtime.db.transaction() as conn:
        conn.execute(text(SEED_CASES.replace("{series}", series(runtime, 8))), {"now": now})
        conn.execute(text("UPDATE cases SET owner_unreachable = 1 WHERE id IN ('dc_seed_1', 'dc_seed_4')"))
    client = falcon.testing.TestClient(create_app(runtime))
    samples = scrape(client)
    assert value(samples, "dunning_cases", state="recovered") == 2
    assert value(samples, "dunning_cases", state="failing") == 6
    assert value(samples, "dunning_cases_owner_unreachable") == 1  # dc_seed_4 is recovered: not open
    assert value(samples, "dunning_recovered_cases_total", currency="usd") == 2
    assert value(samples, "dunning_recovered_amount_total", currency="usd") == 500 + 1000
    assert value(samples, "dunning_cases_opened_30d") == 8 and value(samples, "dunning_recovery_30d_ratio") == 0.25
    with runtime.db.transaction() as conn:
        conn.execute(text("UPDATE cases SET opened_at = :old WHERE id = 'dc_seed_1'"), {"old": now - timedelta(days=31)})
    assert value(scrape(client), "dunning_cases_opened_30d") == 7
    assert rows(runtime, "metric_counts")
