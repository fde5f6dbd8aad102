"""Section: the floor of this design's durable work, against which end to end is measured.

1. Capture (bench/floor_capture.py, a subprocess running the service's own code on a scratch
   database): per event type of the e2e mix, every statement the webhook and the actors it leads to
   issue, with parameters and transactions.
2. Set up (not timed): the e2e run's customer pool, and the failures its paid events settle.
3. Replay (bench/floor_replay.py): the same mix and count as the e2e peak batch, each event its
   template's statements with ids of its own, in the same transactions, with raw prepared psycopg,
   in WORKER_PROCESSES processes x WORKER_THREADS connections (the workers' concurrency).

Reported: floor events/s, e2e / floor, statements per event type, and CPU per event of the replay
processes and of their PostgreSQL backends (/proc/<pid>/stat, pids from pg_stat_activity), next to
the e2e run's worker, web and backend CPU. PostgreSQL only: the floor is a PostgreSQL figure.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time

from bench.events import MIX
from bench.services import BackendCpu, database_name, free_port, process_cpu_seconds, psycopg_url

PARTS = {"webhook": "webhook", "process_event": "processing", "send_email": "delivery"}


def _count(transactions: list[dict]) -> dict:
    statements = sum(len(t["statements"]) for t in transactions)
    return {"statements": statements, "transactions": sum(1 for t in transactions if not t["autocommit"]),
            "autocommit": sum(len(t["statements"]) for t in transactions if t["autocommit"])}


def statement_counts(capture: dict) -> dict:
    """Per event type: statements and transactions in all, and per part (webhook, processing, delivery...)."""
    out = {}
    for kind, template in capture["templates"].items():
        txs = template["transactions"]
        parts: dict[str, list] = {}
        for t in txs:
            parts.setdefault(PARTS.get(t["part"], t["part"]), []).append(t)
        out[kind] = {**_count(txs), "parts": {name: _count(group) for name, group in parts.items()}}
    return out


def plan(events: int, seed: int = 8) -> dict:
    """The units: the e2e mix of `events` (bench.events.MIX, the same seed), its customer pool and
    the failures its paid events settle. Every unit has a number of its own (its ids)."""
    pool = max(5, min(200, events // 4))
    settle_count = int(events * 0.25) + 5
    customers = [["customer.created", n] for n in range(pool)]
    settle = [["invoice.payment_failed", pool + n] for n in range(settle_count)]
    rng = random.Random(seed)
    types, weights = [t for t, _ in MIX], [w for _, w in MIX]
    free = pool + settle_count
    timed, settling = [], list(settle)
    for _ in range(events):
        kind = rng.choices(types, weights)[0]
        if kind == "invoice.paid" and settling:
            timed.append(["invoice.paid", settling.pop()[1]])
            continue
        timed.append(["invoice.payment_failed" if kind == "invoice.paid" else kind, free])
        free += 1
    return {"pool": pool, "setup": customers + settle, "timed": timed}


def measure_floor(run, e2e: dict | None = None) -> dict:
    server = run.postgres_server()
    if server is None:
        return {"skipped": f"the floor needs PostgreSQL: {run.postgres_problem}"}
    cfg = run.cfg
    url = run.new_database("floor")
    pg_url = psycopg_url(url)
    env = run.service_env(url, run.namespace("floor"), free_port(), {"LOG_LEVEL": "WARNING"})
    capture_path = run.dir / "floor-capture.json"
    with open(run.logs / "floor-capture.log", "ab") as log:
        done = subprocess.run([sys.executable, "-m", "bench.floor_capture", str(capture_path), run.tag],
                              env=env, stdout=log, stderr=subprocess.STDOUT, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"floor capture failed (rc={done.returncode}): {(run.logs / 'floor-capture.log').read_text()[-1500:]}")
    capture = json.loads(capture_path.read_text())
    units = plan(cfg.e2e_events)
    result: dict = {"database": "postgresql", "processes": cfg.worker_processes, "threads": cfg.worker_threads,
                    "statements": statement_counts(capture), "capture_statuses": capture["statuses"],
                    "capture_emails": capture["mails"]}

    from bench.floor_replay import ids_for, prepared_unit, run_units
    ids = ids_for(capture, units["pool"])
    setup = run_units(pg_url, [prepared_unit(capture["templates"][k], ids(u)) for k, u in units["setup"]],
                      cfg.worker_processes * cfg.worker_threads)
    result["setup"] = {k: setup[k] for k in ("units", "errors", "first_error")}

    procs = []
    try:
        for p in range(cfg.worker_processes):
            spec = run.dir / f"floor-replay-{p}.json"
            spec.write_text(json.dumps({"url": pg_url, "capture": str(capture_path), "pool_size": units["pool"],
                                        "units": units["timed"][p::cfg.worker_processes],
                                        "threads": cfg.worker_threads}))
            procs.append(subprocess.Popen([sys.executable, "-m", "bench.floor_replay", str(spec)],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=open(run.logs / f"floor-replay-{p}.log", "ab"), text=True))
        for proc in procs:
            line = proc.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"floor replay process did not start: {line!r}")
        backends = BackendCpu(server, database_name(url)).start()
        client_before = [process_cpu_seconds(p.pid) or 0.0 for p in procs]
        started = time.monotonic()
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        parts = [json.loads(proc.stdout.readline()) for proc in procs]
        elapsed = time.monotonic() - started
        client = sum((process_cpu_seconds(p.pid) or 0.0) - b for p, b in zip(procs, client_before))
        pg = backends.stop()
        for proc in procs:
            proc.stdin.write("exit\n")
            proc.stdin.flush()
    finally:
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    count = len(units["timed"])
    result["replay"] = {"events": count, "units": sum(p["units"] for p in parts),
                        "errors": sum(p["errors"] for p in parts),
                        "first_error": next((p["first_error"] for p in parts if p["first_error"]), None),
                        "elapsed_s": round(elapsed, 3), "rate": round(count / elapsed, 1),
                        "client_cpu_ms_per_event": round(client * 1000 / count, 3),
                        "postgres_cpu_ms_per_event": None if pg["seconds"] is None else round(pg["seconds"] * 1000 / count, 3),
                        "postgres_backends": pg["backends"]}
    result["rows"] = _final_events(pg_url)
    result["rows"]["expected"] = sum(capture["statuses"].values()) + len(units["setup"]) + count
    if e2e and e2e.get("status") == "ok":
        result["vs_e2e"] = compare(e2e["peak"], result["replay"])
    return result


def _final_events(pg_url: str) -> dict:
    import psycopg
    with psycopg.connect(pg_url) as conn:
        final = conn.execute("SELECT count(*) FROM events WHERE status IN ('processed', 'ignored')").fetchone()[0]
        emails = conn.execute("SELECT count(*) FROM emails WHERE status = 'sent'").fetchone()[0]
    return {"events_final": final, "emails_sent": emails}


def compare(peak: dict, floor: dict) -> dict:
    """e2e / floor for events/s and CPU per event (whole stack and PostgreSQL alone)."""
    stack = [peak.get("worker_cpu_ms_per_event"), peak.get("web_cpu_ms_per_event"), peak.get("postgres_cpu_ms_per_event")]
    e2e_stack = round(sum(stack), 2) if None not in stack else None
    floor_stack = (round(floor["client_cpu_ms_per_event"] + floor["postgres_cpu_ms_per_event"], 3)
                   if floor.get("postgres_cpu_ms_per_event") is not None else None)
    return {
        "rate_ratio": round(peak["rate"] / floor["rate"], 3) if floor["rate"] else None,
        "e2e_stack_cpu_ms_per_event": e2e_stack, "floor_stack_cpu_ms_per_event": floor_stack,
        "stack_cpu_ratio": round(e2e_stack / floor_stack, 2) if e2e_stack and floor_stack else None,
        "postgres_cpu_ratio": (round(peak["postgres_cpu_ms_per_event"] / floor["postgres_cpu_ms_per_event"], 2)
                               if peak.get("postgres_cpu_ms_per_event") and floor.get("postgres_cpu_ms_per_event")
                               else None),
    }
