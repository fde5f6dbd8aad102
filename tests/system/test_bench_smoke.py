"""`make bench` end to end at tiny sizes: the harness starts the real service, measures, cleans up.

Speed is never asserted here (the bench reports it); this checks that every section of the
results is there and made of real measurements, and that nothing the run started is left behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from config.settings import PROJECT_ROOT
from tests.support.services import TEST_DATABASE_URL, postgres_reachable

pytestmark = pytest.mark.slow


def _bench_processes() -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmd = f.read()
            except OSError:
                continue
            if b"dunning-bench-" in cmd or any(name in cmd for name in (
                    b"bench.bare_app", b"bench.noop_actors", b"bench.peer_site", b"django.core.wsgi")):
                found.add(int(entry))
    return found


def test_the_smoke_bench_writes_every_section_and_leaves_no_process_behind(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL", "BENCH_DATABASE_URL", "BENCH_REDIS_URL", "BENCH_PEER_PYTHON")}
    has_postgres = postgres_reachable()
    if has_postgres:
        env["BENCH_DATABASE_URL"] = TEST_DATABASE_URL
    before = _bench_processes()
    done = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--out", str(tmp_path)], cwd=PROJECT_ROOT,
                          env=env, capture_output=True, text=True, timeout=480)
    assert done.returncode == 0, done.stderr[-3000:]

    results = json.loads((tmp_path / "latest.json").read_text())
    assert results["machine"]["cpu_count"] == os.cpu_count()
    assert results["settings"]["mode"] == "smoke"

    ingest = results["ingest"]
    assert ingest["bare"]["rps"] > 0 and ingest["webhook"]["rps"] > 0
    assert ingest["webhook"]["statuses"] == {"200": ingest["webhook"]["requests"]}
    assert 0 < ingest["ratio"] and ingest["half_peak"]["p99_ms"] > 0

    assert results["noop"]["rate"] > 0
    e2e = results["e2e"]
    assert e2e["status"] == "ok", e2e
    assert e2e["peak"]["payment_failed_emails"] == e2e["peak"]["payment_failed"] > 0
    assert e2e["half_peak"]["p99_ms"] > 0

    floor = results["floor"]  # issue 17: the service's own statements replayed with raw prepared psycopg
    if has_postgres:
        replay = floor["replay"]
        assert replay["errors"] == 0 and replay["units"] == replay["events"] == results["settings"]["e2e_events"], floor
        assert floor["setup"]["errors"] == 0 and floor["rows"]["events_final"] == floor["rows"]["expected"], floor
        assert replay["rate"] > 0 and replay["client_cpu_ms_per_event"] > 0 and replay["postgres_backends"] > 0
        assert replay["postgres_cpu_ms_per_event"] is None or replay["postgres_cpu_ms_per_event"] > 0
        failed = floor["statements"]["invoice.payment_failed"]
        assert failed["parts"]["webhook"] == {"statements": 1, "transactions": 0, "autocommit": 1}
        assert failed["parts"]["processing"]["statements"] > 0 and failed["parts"]["delivery"]["statements"] > 0
        assert floor["rows"]["emails_sent"] > 0 and floor["vs_e2e"]["rate_ratio"] > 0
        assert e2e["peak"]["postgres_cpu_ms_per_event"] > 0
        assert "e2e vs the floor" in done.stdout
    else:
        assert "PostgreSQL" in floor["skipped"]

    prune = results["prune"]
    assert prune["removed"] == prune["events"] > 0 and prune["rows_per_s"] > 0
    assert prune["without"]["p99_ms"] > 0 and prune["during"]["p99_ms"] > 0 and prune["p99_ratio"] > 0

    if has_postgres:
        scaling = results["scaling"]
        assert scaling["tick"]["small"]["enqueued"] == scaling["tick"]["large"]["enqueued"] == 200
        assert scaling["tick"]["large"]["open_cases"] == 5000
        assert scaling["ingest"]["large"]["stored_events"] > scaling["ingest"]["small"]["stored_events"]
    else:
        assert "PostgreSQL" in results["scaling"]["skipped"]

    front = results["front"]  # issue 13: the stalled-connection scenario, at smoke size
    assert front["attack"]["events"]["statuses"] == {"200": front["events"]}, front
    assert front["attack"]["stalled"]["closed_by_server"] > 0 and front["attack"]["healthz"]["polls"] > 0

    peer = results["peer"]  # issue 17's side-by-side with dj-stripe: where `.venv-peer` exists (.ci/run makes it)
    if (PROJECT_ROOT / ".venv-peer" / ".installed").exists() and has_postgres:
        assert peer["status"] == "ok", peer
        assert peer["peak"]["processed"] == peer["peak"]["events"] == results["settings"]["e2e_events"]
        assert peer["peak"]["rate"] > 0 and peer["peak"]["web_cpu_ms_per_event"] > 0
        assert peer["peak"]["stripe_reads_per_event"] > 0 and "dj-stripe" in done.stdout
    else:
        assert "skipped" in peer, peer

    assert results["memory"]["worker_mb"] > 0 and results["memory"]["web_mb"] > 0
    assert {c["result"] for c in results["checks"].values()} <= {"PASS", "MISS", "n/a"}
    table = (tmp_path / "latest.md").read_text()
    assert "| section | figure | measured |" in table and "receipt->email" in table
    assert "ingest" in done.stdout and ("PASS" in table or "MISS" in table)
    assert _bench_processes() <= before
    if has_postgres:
        import psycopg
        with psycopg.connect(TEST_DATABASE_URL) as conn:
            left = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                                (f"bench_{results['run_tag']}%",)).fetchall()
        assert left == []


def test_the_console_bench_measures_every_page_on_a_scratch_database_and_drops_it(tmp_path, postgres_url):
    """`python -m bench.console` at a tiny size: every figure is a real timing, the database is gone after."""
    import psycopg
    out = tmp_path / "console.json"
    env = {**{k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "BENCH_DATABASE_URL")},
           "BENCH_DATABASE_URL": TEST_DATABASE_URL}
    result = subprocess.run([sys.executable, "-m", "bench.console", "--cases", "300", "--repeats", "2",
                             "--out", str(out)], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads(out.read_text())
    assert (data["cases"], data["events"]) == (300, 900)
    assert {"case page", "search: owner email", "list: owner unreachable",
            "recovery view: GET /console (snapshot)"} <= set(data["figures"])
    assert all(f["median_ms"] > 0 and f["n"] >= 1 for f in data["figures"].values())
    with psycopg.connect(TEST_DATABASE_URL, autocommit=True) as conn:
        left = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'bench_console_%'").fetchall()
    assert not [name for (name,) in left if name.split("_")[2] in result.stderr]
