"""Section 5: the retention prune (`dunning data prune`) on PRUNE_EVENTS old events, webhooks meanwhile.

Measured in one run on one database: rows removed per second while `dunning data prune` deletes
PRUNE_EVENTS processed events older than [retention] event_days (batches of at most 1,000 rows
per transaction, working at most half the time: worker/privacy/retention.py DUTY), and the webhook's p99
in an open loop during the prune against the same open loop just before it (target: at most 2x).
The open loop runs at half of the webhook's peak measured just before (as the ingest section),
or at BENCH_PRUNE_RATE requests/s. The webhook's own events
are new (received, never processed: never pruned). PostgreSQL rows are made by generate_series;
on SQLite (no BENCH_DATABASE_URL) by executemany, which is slower to load but the same prune.
Size: `--prune-events N` (or BENCH_PRUNE_EVENTS); default 1,000,000, 20,000 with --quick/--smoke.
"""

from __future__ import annotations

import json
import subprocess
import time

from bench.events import EVT_MARK, INV_MARK, ingest_template
from bench.services import BIN, free_port, psycopg_url

CHUNK = 250_000
PAYLOAD = ('{"id":"%s","object":"event","type":"invoice.paid","created":1700000000,'
           '"data":{"object":{"id":"in_%s","object":"invoice","customer":"cus_%s",'
           '"customer_email":"owner+%s@example.com","customer_name":"Example Owner","amount_due":4900,'
           '"currency":"usd","status":"paid","lines":{"data":[{"description":"Pro plan (monthly)"}]}}}}')


def _load_postgres(url: str, n: int) -> None:
    import psycopg
    with psycopg.connect(psycopg_url(url), autocommit=True) as conn:
        for lo in range(1, n + 1, CHUNK):
            hi = min(n, lo + CHUNK - 1)
            conn.execute("""
                INSERT INTO events (id, type, api_version, created, livemode, payload, source, received_at,
                                    status, attempts, processed_at)
                SELECT 'evt_old' || substr(md5('evt' || g), 1, 20), 'invoice.paid', '2025-03-31.basil',
                       1700000000 + g, false,
                       format(%(payload)s, 'evt_old' || substr(md5('evt' || g), 1, 20), md5('inv' || g),
                              md5('cus' || (g %% 50000)), g),
                       'webhook', now() at time zone 'utc' - interval '500 days' - make_interval(secs => g),
                       'processed', 1, now() at time zone 'utc' - interval '500 days' - make_interval(secs => g)
                FROM generate_series(%(lo)s::int, %(hi)s::int) AS g
            """, {"lo": lo, "hi": hi, "payload": PAYLOAD})
        conn.execute("ANALYZE events")


def _load_sqlite(url: str, n: int) -> None:
    import hashlib
    import sqlite3
    from datetime import datetime, timedelta, timezone
    base = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(days=500)
    conn = sqlite3.connect(url.split("///", 1)[1])
    try:
        for lo in range(1, n + 1, 50_000):
            rows = []
            for g in range(lo, min(n, lo + 49_999) + 1):
                eid = "evt_old" + hashlib.md5(f"evt{g}".encode()).hexdigest()[:20]
                at = (base - timedelta(seconds=g)).isoformat(sep=" ")
                rows.append((eid, 1700000000 + g, PAYLOAD % (eid, g, g % 50000, g), at, at))
            conn.executemany("INSERT INTO events (id, type, api_version, created, livemode, payload, source,"
                             " received_at, status, attempts, processed_at) VALUES (?, 'invoice.paid',"
                             " '2025-03-31.basil', ?, 0, ?, 'webhook', ?, 'processed', 1, ?)", rows)
            conn.commit()
    finally:
        conn.close()


def measure_prune(run) -> dict:
    cfg = run.cfg
    n = cfg.prune_events
    url = run.new_database("prune")
    began = time.perf_counter()
    (_load_sqlite if url.startswith("sqlite") else _load_postgres)(url, n)
    loaded_s = time.perf_counter() - began
    env = run.service_env(url, run.namespace("prune"), free_port(), {"LOG_LEVEL": "WARNING"})
    common = dict(template=ingest_template(run.tag), marks=[EVT_MARK, INV_MARK], concurrency=cfg.concurrency)
    web, port = run.start_web("web-prune", env)
    try:
        run.load("prune-warmup", port=port, mode="closed", duration=cfg.warmup, id_prefix=f"pw{run.tag}", **common)
        rate = cfg.prune_rate
        if not rate:  # as the ingest section: half of this web's own peak, measured now on this machine
            peak = run.load("prune-peak", port=port, mode="closed", duration=max(2.0, cfg.duration / 2),
                            id_prefix=f"pp{run.tag}", **common)
            rate = max(1.0, round(peak["rps"] * 0.5, 1))
        without = run.load("prune-baseline", port=port, mode="open", rate=rate, duration=cfg.duration,
                           id_prefix=f"pb{run.tag}", **common)
        prune = subprocess.Popen([str(BIN / "dunning"), "data", "prune", "--json"], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)  # its start-up (imports, reflection) is not the prune
        during = run.load("prune-during", port=port, mode="open", rate=rate, duration=cfg.duration,
                          id_prefix=f"pd{run.tag}", **common)
        still_running = prune.poll() is None
        out, err = prune.communicate(timeout=3600)
        if prune.returncode != 0:
            raise RuntimeError(f"dunning data prune failed (rc={prune.returncode}): {err[-500:]}")
        result = json.loads(out)
    finally:
        run.stop(web)
    removed = result["removed"].get("events", 0)
    seconds = result.get("seconds") or None
    ratio = round(during["p99_ms"] / without["p99_ms"], 3) if without.get("p99_ms") else None
    keep = ("rps", "p50_ms", "p99_ms", "requests", "statuses")
    return {"database": run.database_kind, "events": n, "load_s": round(loaded_s, 1), "removed": removed,
            "prune_s": seconds, "rows_per_s": round(removed / seconds) if seconds else None,
            "rate": rate, "prune_outlasted_load": still_running,
            "without": {k: without[k] for k in keep}, "during": {k: during[k] for k in keep}, "p99_ratio": ratio}
