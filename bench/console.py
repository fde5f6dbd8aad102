"""The console at scale: `python -m bench.console [--small] [--cases N] [--keep]` (PostgreSQL only).

Fills a scratch database with CASES cases (default 1,000,000) and 3 Stripe events, 2 transitions
and 2 emails per case, all made by PostgreSQL itself (INSERT ... SELECT FROM generate_series), then
times the console's pages through the real WSGI app (Falcon test client, admin bearer token, the
full render included): the case list (default, by state, by amount, by disruption date, owner
unreachable, disruption within 7 days, a second keyset page), searches (invoice id, invoice number,
owner email, customer id), case pages, and the recovery view (computed cold, then read from its
snapshot). Budgets from issue 16: list, search, case page < 100 ms; recovery view < 500 ms.
Prints each figure as median and p95 in ms and as a ratio of its budget; writes
bench/results/console.json. --small: 20,000 cases (checks the harness, not the speed).
Server: BENCH_DATABASE_URL or DATABASE_URL or postgresql://postgres@127.0.0.1:5432/postgres.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

from bench.services import ScratchDatabase, postgres_reachable, psycopg_url

RESULTS = Path(__file__).resolve().parent / "results" / "console.json"
CHUNK = 200_000
STATES = ("recovered", "recovered", "recovered", "recovered", "recovered", "recovered", "failing",
          "disruption_scheduled", "disrupted", "uncollectible", "uncollectible", "voided")
ADMIN_TOKEN = "bench-console-admin-token-0123456789"


def log(message: str) -> None:
    print(f"[bench.console {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _states_sql() -> str:
    whens = " ".join(f"WHEN {i} THEN '{s}'" for i, s in enumerate(STATES))
    return f"(CASE (g % {len(STATES)}) {whens} END)"


def load(url: str, cases: int) -> dict[str, float]:
    """Customers, invoices, cases, events, transitions and emails for `cases` cases; seconds per table."""
    import psycopg
    customers = max(1, cases // 2)
    took = {}
    state = _states_sql()
    # A case opened up to 365 days ago; closed cases closed 0-14 days after; open ones due soon.
    opened = "(now() at time zone 'utc' - make_interval(secs => (g::bigint * 7919) % 31536000))"
    statements = {
        "customers": (customers, """
            INSERT INTO customers (id, email, name, metadata, updated_at)
            SELECT 'cus_b' || g, 'owner' || g || '@example.com', 'Owner ' || g, '{}', now()
            FROM generate_series(%(lo)s::int, %(hi)s::int) g"""),
        "invoices": (cases, f"""
            INSERT INTO invoices (id, customer_id, subscription_id, number, status, currency, amount_due,
                                  amount_remaining, source_created, updated_at)
            SELECT 'in_b' || g, 'cus_b' || (1 + g % {customers}), 'sub_b' || g, 'BN-' || lpad(g::text, 7, '0'),
                   CASE WHEN {state} = 'recovered' THEN 'paid' WHEN {state} = 'voided' THEN 'void'
                        WHEN {state} = 'uncollectible' THEN 'uncollectible' ELSE 'open' END,
                   CASE WHEN g % 10 = 0 THEN 'eur' ELSE 'usd' END, 1000 + (g * 37) % 900000,
                   1000 + (g * 37) % 900000, 0, now()
            FROM generate_series(%(lo)s::int, %(hi)s::int) g"""),
        "cases": (cases, f"""
            INSERT INTO cases (id, invoice_id, customer_id, subscription_id, account_id, state, schedule, currency,
                               amount_due, first_failed_at, attempt_count, next_step, next_step_at, disrupt_at,
                               last_event_created, opened_at, closed_at, recovered_amount, version, updated_at,
                               owner_unreachable)
            SELECT 'dc_b' || g, 'in_b' || g, 'cus_b' || (1 + g % {customers}), 'sub_b' || g, 'sub_b' || g,
                   {state}, 'default', CASE WHEN g % 10 = 0 THEN 'eur' ELSE 'usd' END, 1000 + (g * 37) % 900000,
                   {opened}, 1,
                   CASE WHEN {state} IN ('failing', 'disruption_scheduled') THEN 2 END,
                   CASE WHEN {state} IN ('failing', 'disruption_scheduled')
                        THEN now() at time zone 'utc' + make_interval(secs => g % 604800) END,
                   CASE WHEN {state} IN ('disruption_scheduled', 'disrupted')
                        THEN now() at time zone 'utc' + make_interval(secs => (g % 1209600) - 300000) END,
                   0, {opened},
                   CASE WHEN {state} IN ('recovered', 'uncollectible', 'voided')
                        THEN {opened} + make_interval(secs => (g * 13) % 1209600) END,
                   CASE WHEN {state} = 'recovered' THEN 1000 + (g * 37) % 900000 END, 1, now(),
                   CASE WHEN g % 97 = 0 THEN 1 ELSE 0 END
            FROM generate_series(%(lo)s::int, %(hi)s::int) g"""),
        "events": (cases * 3, f"""
            INSERT INTO events (id, type, api_version, created, livemode, payload, source, received_at, status,
                                attempts, processed_at, object_id)
            SELECT 'evt_b' || e, t, '2025-03-31.basil', 1764000000 + e, false,
                   '{{"id":"evt_b' || e || '","object":"event","type":"' || t || '","data":{{"object":'
                     || '{{"id":"in_b' || g || '","object":"invoice","customer":"cus_b' || (1 + g % {customers})
                     || '","status":"open","currency":"usd","amount_due":' || (1000 + (g * 37) % 900000)
                     || ',"attempt_count":1,"billing_reason":"subscription_cycle"}}}}}}',
                   'webhook', {opened}, CASE WHEN e % 5000 = 0 THEN 'failed' ELSE 'processed' END, 1, {opened},
                   'in_b' || g
            FROM (SELECT g, (g - 1) * 3 + k AS e,
                         (ARRAY['invoice.payment_failed', 'invoice.payment_failed', 'invoice.paid'])[k] AS t
                  FROM generate_series(%(lo)s::int, %(hi)s::int) g, generate_series(1, 3) k) s"""),
        "case_transitions": (cases * 2, f"""
            INSERT INTO case_transitions (id, case_id, from_state, to_state, trigger, event_id, step, at)
            SELECT 'tr_b' || g || '_' || k, 'dc_b' || g, CASE WHEN k = 1 THEN NULL ELSE 'failing' END,
                   CASE WHEN k = 1 THEN 'failing' ELSE {state} END, CASE WHEN k = 1 THEN 'opened' ELSE 'bench' END,
                   'evt_b' || ((g - 1) * 3 + k), NULL, {opened} + make_interval(secs => k * 3600)
            FROM generate_series(%(lo)s::int, %(hi)s::int) g, generate_series(1, 2) k"""),
        "emails": (cases * 2, f"""
            INSERT INTO emails (id, dedupe_key, template, recipient, subject, body_text, body_html, case_id,
                                invoice_id, customer_id, status, attempts, next_attempt_at, created_at, sent_at)
            SELECT 'em_b' || g || '_' || k, 'case:dc_b' || g || ':step:' || k,
                   (ARRAY['payment-failed', 'reminder'])[k], 'owner' || (1 + g % {customers}) || '@example.com',
                   'Your payment failed', 'Please update your card.',
                   '<html><body><p>Your payment of the invoice failed. Please update your card.</p></body></html>',
                   'dc_b' || g, 'in_b' || g, 'cus_b' || (1 + g % {customers}), 'sent', 1,
                   {opened}, {opened} + make_interval(days => (k - 1) * 3),
                   {opened} + make_interval(days => (k - 1) * 3)
            FROM generate_series(%(lo)s::int, %(hi)s::int) g, generate_series(1, 2) k"""),
    }
    with psycopg.connect(psycopg_url(url), autocommit=True) as conn:
        for table, (rows, sql) in statements.items():
            began = time.perf_counter()
            per = CHUNK if table not in ("events", "case_transitions", "emails") else CHUNK // 2
            top = customers if table == "customers" else cases
            sql = sql.replace(" % ", " %% ")  # a modulo, not a psycopg placeholder
            for lo in range(1, top + 1, per):
                conn.execute(sql, {"lo": lo, "hi": min(top, lo + per - 1)})
            conn.execute(f"ANALYZE {table}")
            took[table] = round(time.perf_counter() - began, 1)
            log(f"{table}: {rows:,} rows in {took[table]} s")
    return took


def _time(client, path: str, repeats: int, headers) -> list[float]:
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        answer = client.simulate_get(path, headers=headers)
        times.append((time.perf_counter() - began) * 1000)
        if answer.status_code != 200:
            raise RuntimeError(f"{path}: {answer.status_code} {answer.text[:300]}")
    return times


def measure(url: str, cases: int, repeats: int) -> dict:
    import falcon.testing

    from config.settings import load_settings
    from worker.queue.broker import make_stub_broker
    from worker.runtime import setup
    from worker.web.app import create_app
    settings = load_settings({"DATABASE_URL": url, "STRIPE_WEBHOOK_SECRET": "whsec_bench_console_0123456789abcdef",
                              "ADMIN_TOKEN": ADMIN_TOKEN, "LOG_LEVEL": "WARNING"})
    runtime = setup(settings, make_stub_broker())
    client = falcon.testing.TestClient(create_app(runtime))
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    first_page = client.simulate_get("/console/cases", headers=headers).text
    marker = 'rel="next" href="'
    second = first_page[first_page.index(marker) + len(marker):].split('"', 1)[0].replace("&amp;", "&")
    pick = [1 + (i * 7919) % cases for i in range(repeats)]
    checks = {
        "list: newest first": ("/console/cases", 100),
        "list: second keyset page": (second, 100),
        "list: state failing": ("/console/cases?state=failing", 100),
        "list: largest amount first": ("/console/cases?sort=amount", 100),
        "list: state failing by amount": ("/console/cases?state=failing&sort=amount", 100),
        "list: soonest disruption first": ("/console/cases?sort=disrupt", 100),
        "list: disruption within 7 days": ("/console/cases?within=7&sort=disrupt", 100),
        "list: owner unreachable": ("/console/cases?unreachable=1", 100),
    }
    out: dict = {}
    for name, (path, budget) in checks.items():
        out[name] = _summary(_time(client, path, repeats, headers), budget)
    per_target = {
        "search: invoice id": (lambda g: f"/console/cases?q=in_b{g}", 100),
        "search: invoice number": (lambda g: f"/console/cases?q=BN-{g:07d}", 100),
        "search: owner email": (lambda g: f"/console/cases?q=owner{1 + g % max(1, cases // 2)}%40example.com", 100),
        "search: customer id": (lambda g: f"/console/cases?q=cus_b{1 + g % max(1, cases // 2)}", 100),
        "case page": (lambda g: f"/console/cases/in_b{g}", 100),
    }
    per_target["case page, the same cases again (warm cache)"] = per_target["case page"]
    for name, (path_for, budget) in per_target.items():
        times = []
        for g in pick:
            times += _time(client, path_for(g), 1, headers)
        out[name] = _summary(times, budget)
    from worker.console.recovery import SNAPSHOT_TTL, snapshot
    cold = []
    for _ in range(3):
        began = time.perf_counter()
        snapshot(runtime, refresh=True)
        cold.append((time.perf_counter() - began) * 1000)
    out["recovery: computed (cold, snapshot written)"] = _summary(cold, 500)
    from sqlalchemy import update
    table = runtime.db.table("console_snapshots")
    with runtime.db.transaction() as conn:  # stale: the page answers from it and refreshes behind
        conn.execute(update(table).values(computed_at=table.c.computed_at - SNAPSHOT_TTL * 2))
    out["recovery view: GET /console (stale snapshot, refresh in background)"] = _summary(
        _time(client, "/console", 1, headers), 500)
    from worker.console import recovery as console_recovery
    with console_recovery._refreshing:  # the background refresh is over
        pass
    out["recovery view: GET /console (snapshot)"] = _summary(_time(client, "/console", repeats, headers), 500)
    runtime.db.dispose()
    return out


def _summary(times: list[float], budget: float) -> dict:
    times = sorted(times)
    p95 = times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))]
    median = statistics.median(times)
    return {"median_ms": round(median, 1), "p95_ms": round(p95, 1), "budget_ms": budget,
            "median_over_budget": round(median / budget, 3), "p95_over_budget": round(p95 / budget, 3),
            "n": len(times)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.console", description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="20,000 cases: checks the harness, not the speed")
    parser.add_argument("--cases", type=int, default=None, help="cases to generate (default 1,000,000)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    cases = args.cases or (20_000 if args.small else 1_000_000)
    server = (os.environ.get("BENCH_DATABASE_URL") or os.environ.get("DATABASE_URL")
              or "postgresql://postgres@127.0.0.1:5432/postgres")
    problem = postgres_reachable(server)
    if problem:
        log(f"needs PostgreSQL: {problem}")
        return 2
    from config.settings import normalise_database_url
    from worker.infra.db import Database
    scratch = ScratchDatabase(server, f"console_{uuid.uuid4().hex[:6]}")
    url = normalise_database_url(scratch.create())
    try:
        db = Database(url)
        db.init_schema()
        db.dispose()
        log(f"loading {cases:,} cases into {scratch.name} ...")
        loaded = load(url, cases)
        log("timing the console ...")
        figures = measure(url, cases, args.repeats)
    finally:
        if not args.keep:
            scratch.drop()
    result = {"cases": cases, "events": cases * 3, "emails": cases * 2, "transitions": cases * 2,
              "load_seconds": loaded, "cpu_count": os.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()],
              "figures": figures}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    width = max(len(k) for k in figures)
    print(f"console at {cases:,} cases / {cases * 3:,} events (PostgreSQL)")
    for name, f in figures.items():
        print(f"{name:{width}}  median {f['median_ms']:8.1f} ms  p95 {f['p95_ms']:8.1f} ms  "
              f"budget {f['budget_ms']} ms  median/budget {f['median_over_budget']:.2f}  p95/budget {f['p95_over_budget']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
