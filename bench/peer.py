"""Section `peer` (`make bench-peer`): dj-stripe's webhook view, side by side with the e2e section.

dj-stripe verifies and processes each event in the request (bench/peer_site.py), so its events/s
end to end is its requests/s. It gets the e2e section's shape (the same gunicorn processes and
threads, the same connections, PostgreSQL) and events of the same factory and mix: customers
first, failures its paid events settle, every type once (not timed), then a timed batch of
`e2e_events`. Its reads from Stripe's API go to bench/stripe_stub.py (TCP_NODELAY, in this
process), which answers with the objects the run's events carry.

It runs only where dj-stripe is installed, in an interpreter of its own (BENCH_PEER_PYTHON, else
`.venv-peer` made by `make bench-peer`), and only on PostgreSQL (as the e2e figure it sits beside).
Elsewhere the section says why it was skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from bench.e2e import Batch, batch_customers
from bench.events import EventFactory
from bench.services import BackendCpu, ScratchDatabase, free_port, tree_cpu_seconds, tree_peak_rss, wait_http_ok
from bench.setup import WEBHOOK_SECRET
from bench.stripe_stub import StripeStub
from config.settings import PROJECT_ROOT

PEER_VENV_PYTHON = PROJECT_ROOT / ".venv-peer" / "bin" / "python"


def peer_python(env: dict[str, str]) -> Path:
    return Path(env.get("BENCH_PEER_PYTHON") or PEER_VENV_PYTHON)


# Importing the packages is the check; their versions go into the results.
_PROBE = ("import djstripe, django, gunicorn, json, importlib.metadata as m; print(json.dumps("
          "{p: m.version(p) for p in ('dj-stripe', 'Django', 'stripe', 'gunicorn')}))")


def check_peer(python: Path, on_postgresql: bool) -> tuple[dict[str, str], str | None]:
    """The peer's package versions in `python`, and why it cannot run here (None: it can)."""
    if not python.exists():
        return {}, f"dj-stripe is not installed ({python} not found): run `make bench-peer`"
    probe = subprocess.run([str(python), "-c", _PROBE], capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no error output"])[-1]
        return {}, f"dj-stripe is not importable by {python}: {last}"
    versions = json.loads(probe.stdout)
    if not on_postgresql:
        return versions, "the peer runs on PostgreSQL only (set BENCH_DATABASE_URL)"
    return versions, None


def measure_peer(run) -> dict:
    cfg = run.cfg
    python = peer_python(dict(os.environ))
    server = run.postgres_server()
    versions, reason = check_peer(python, server is not None)
    if reason:
        return {"skipped": reason}
    scratch = ScratchDatabase(server, f"{run.tag}_peer")
    run.databases.append(scratch)
    run.database_kind = "postgresql"
    database_url = scratch.create()
    stub = StripeStub().start()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PYTHONPATH"))}
    env.update({"DJANGO_SETTINGS_MODULE": "bench.peer_site", "PYTHONPATH": str(PROJECT_ROOT),
                "PEER_DATABASE": database_url, "PEER_STRIPE_API": stub.url,
                "PEER_WEBHOOK_SECRET": WEBHOOK_SECRET, "PYTHONUNBUFFERED": "1"})
    result: dict = {"database": "postgresql", "processes": cfg.web_workers, "threads": cfg.web_threads,
                    "python": str(python), "versions": versions}
    web = None
    try:
        prepared = subprocess.run([str(python), "-m", "bench.peer_site"], env=env, cwd=str(PROJECT_ROOT),
                                  capture_output=True, text=True, timeout=600)
        if prepared.returncode != 0:
            raise RuntimeError(f"dj-stripe's migrations failed:\n{prepared.stderr[-2000:]}")
        path = prepared.stdout.strip().splitlines()[-1]
        web = run.spawn("peer-web", [str(python), "-m", "gunicorn", "--bind", f"127.0.0.1:{port}",
                                     "--workers", str(cfg.web_workers), "--threads", str(cfg.web_threads),
                                     "--worker-class", "gthread", "--keep-alive", "75",
                                     "django.core.wsgi:get_wsgi_application()"], env)
        wait_http_ok(f"http://127.0.0.1:{port}/healthz", web)

        factory = EventFactory(run.tag + "p")
        customers = batch_customers(factory, cfg.e2e_events)
        failures = [factory.payment_failed(customers[i % len(customers)])
                    for i in range(int(cfg.e2e_events * 0.25) + 4)]
        kinds = [factory.paid(failures[-1].customer_id, failures[-1].invoice_id),
                 factory.customer_updated(customers[0]), factory.card_attached(customers[1])]
        warm = Batch([factory.customer_created(c) for c in customers] + failures + kinds)
        settle = [(p.customer_id, p.invoice_id) for p in failures[:-1]]
        peak = Batch(factory.mix(cfg.e2e_events, customers, settle))
        stub.remember(p.body for p in warm.planned + peak.planned)  # Stripe answers with the latest version

        load = dict(port=port, path=path, mode="closed", duration=600, concurrency=cfg.concurrency)
        warmed = run.load("peer-warmup", bodies_file=warm.write(run.dir / "peer-warmup.jsonl"), **load)
        if warmed["ok"] != len(warm.ids):
            raise RuntimeError(f"dj-stripe refused warm-up events: {warmed['statuses']}\n{web.tail()}")
        reads_before = sum(stub.reads.values())
        backends = BackendCpu(server, scratch.name).start()
        cpu_before = tree_cpu_seconds(web)
        posted = run.load("peer-peak", bodies_file=peak.write(run.dir / "peer-peak.jsonl"), **load)
        web_cpu = tree_cpu_seconds(web) - cpu_before
        pg_cpu = backends.stop()["seconds"]
        processed = _processed(database_url, peak.ids)
        count = len(peak.ids)
        result["peak"] = {
            "events": count, "ok": posted["ok"], "statuses": posted["statuses"], "processed": processed,
            "rate": posted["rps"], "elapsed_s": posted["elapsed_s"],
            "p50_ms": posted["p50_ms"], "p99_ms": posted["p99_ms"],
            "web_cpu_ms_per_event": round(web_cpu * 1000 / count, 2),
            "postgres_cpu_ms_per_event": None if pg_cpu is None else round(pg_cpu * 1000 / count, 2),
            "stripe_reads_per_event": round((sum(stub.reads.values()) - reads_before) / count, 2),
        }
        result["stripe_reads"] = dict(stub.reads)
        if processed != count:
            raise RuntimeError(f"dj-stripe processed {processed} of {count} events (statuses "
                               f"{posted['statuses']}):\n{web.tail()}")
        result["status"] = "ok"
    finally:
        if web is not None:
            result["rss"] = {"web": tree_peak_rss(web)}
            run.stop(web)
        stub.stop()
    return result


def _processed(database_url: str, event_ids: list[str]) -> int:
    """How many of these events dj-stripe stored as valid and processed (its own record of it)."""
    import psycopg
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(DISTINCT body::jsonb->>'id') FROM djstripe_webhookeventtrigger "
                           "WHERE valid AND processed AND body::jsonb->>'id' = ANY(%s)", (event_ids,)).fetchone()
    return int(row[0])

