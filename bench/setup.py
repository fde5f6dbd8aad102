"""The run's settings and shared resources: sizes, the database and broker, service processes.

`BenchConfig` comes from the command line and BENCH_* variables; `BenchRun` owns what one run
creates (a temp dir, a scratch PostgreSQL database or a SQLite file, an embedded Redis or a
namespace on a given Redis) and undoes it all in `close()`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.services import (BIN, Proc, ScratchDatabase, free_port, postgres_reachable, purge_namespace,
                            wait_http_ok)

WEBHOOK_SECRET = "whsec_bench_only_signing_secret"
ADMIN_TOKEN = "bench-admin-token-not-secret"


@dataclass
class BenchConfig:
    mode: str = "full"  # full | quick | smoke
    duration: float = 8.0  # seconds of each timed HTTP phase
    warmup: float = 1.0
    rounds: int = 4  # alternating slices of the ingest and bare loads
    concurrency: int = 16  # HTTP connections (= web workers x threads by default)
    web_workers: int = 2
    web_threads: int = 8
    worker_processes: int = 2
    worker_threads: int = 8
    e2e_events: int = 2000  # events of the peak end-to-end batch
    noop_messages: int = 5000
    idle_seconds: float = 10.0  # the worker pools' CPU while idle is read over this long
    first_email_delay: int = 0  # FIRST_EMAIL_DELAY_SECONDS of the e2e service (BENCH_FIRST_EMAIL_DELAY)
    email_timeout: float = 60.0  # seconds to wait for emails before calling e2e n/a
    scale_small: int = 10_000
    scale_large: int = 1_000_000
    due_steps: int = 1_000
    tick_repeats: int = 9
    prune_events: int = 1_000_000  # old events the prune section deletes (--prune-events)
    prune_rate: float = 0.0  # webhook requests/s before and during the prune; 0: half the measured peak
    database_url: str | None = None  # a PostgreSQL server (a scratch database is made on it)
    redis_url: str | None = None
    log_level: str = "INFO"
    skip: list[str] = field(default_factory=list)  # ingest, e2e, scaling

    @classmethod
    def for_mode(cls, mode: str, env: dict[str, str]) -> "BenchConfig":
        cfg = cls(mode=mode)
        if mode == "quick":
            cfg.duration, cfg.e2e_events, cfg.noop_messages, cfg.idle_seconds = 3.0, 500, 2000, 5.0
            cfg.scale_small, cfg.scale_large = 10_000, 100_000
            cfg.prune_events = 20_000
        elif mode == "smoke":
            cfg.duration, cfg.warmup, cfg.e2e_events, cfg.noop_messages = 1.5, 0.3, 60, 300
            cfg.idle_seconds = 1.0
            cfg.scale_small, cfg.scale_large, cfg.due_steps, cfg.tick_repeats = 2_000, 5_000, 200, 1
            cfg.email_timeout, cfg.rounds = 20.0, 2
            cfg.prune_events = 20_000
        cfg.scale_large = int(env.get("BENCH_LARGE") or cfg.scale_large)
        cfg.scale_small = int(env.get("BENCH_SMALL") or cfg.scale_small)
        cfg.duration = float(env.get("BENCH_DURATION") or cfg.duration)
        cfg.prune_events = int(env.get("BENCH_PRUNE_EVENTS") or cfg.prune_events)
        cfg.prune_rate = float(env.get("BENCH_PRUNE_RATE") or cfg.prune_rate)
        cfg.concurrency = int(env.get("BENCH_CONCURRENCY") or cfg.concurrency)
        cfg.first_email_delay = int(env.get("BENCH_FIRST_EMAIL_DELAY") or cfg.first_email_delay)
        cfg.worker_processes = int(env.get("WORKER_PROCESSES") or cfg.worker_processes)
        cfg.worker_threads = int(env.get("WORKER_THREADS") or cfg.worker_threads)
        cfg.web_workers = int(env.get("WEB_CONCURRENCY") or cfg.web_workers)
        cfg.web_threads = int(env.get("WEB_THREADS") or cfg.web_threads)
        cfg.database_url = env.get("BENCH_DATABASE_URL") or env.get("DATABASE_URL") or None
        if cfg.database_url and cfg.database_url.startswith("sqlite"):
            cfg.database_url = None  # SQLite is the embedded default: a fresh file in the run dir
        cfg.redis_url = env.get("BENCH_REDIS_URL") or env.get("REDIS_URL") or None
        cfg.log_level = env.get("BENCH_LOG_LEVEL") or cfg.log_level
        return cfg

    def public(self) -> dict:
        data = asdict(self)
        for key in ("database_url", "redis_url"):
            data[key] = _redact(data[key])
        return data


def _redact(url: str | None) -> str | None:
    if not url or "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}" if ":" in creds else url


class BenchRun:
    """What one run owns; `close()` stops, drops and deletes all of it."""

    def __init__(self, cfg: BenchConfig):
        self.cfg = cfg
        self.tag = uuid.uuid4().hex[:8]
        self.dir = Path(tempfile.mkdtemp(prefix=f"dunning-bench-{self.tag}-"))
        self.logs = self.dir / "logs"
        self.logs.mkdir()
        self.procs: list[Proc] = []
        self.databases: list[ScratchDatabase] = []
        self.namespaces: list[str] = []
        self.embedded = None
        self.redis_url: str | None = None
        self.postgres_problem: str | None = None
        self.database_kind = "sqlite"
        self.profile_dir: Path | None = None  # set by --profile
        self.profiles: dict[str, dict] = {}

    # -- resources --------------------------------------------------------------------------------
    def start_broker(self) -> str:
        if self.cfg.redis_url:
            self.redis_url = self.cfg.redis_url
        else:
            from worker.infra.embedded_redis import EmbeddedRedis
            self.embedded = EmbeddedRedis(self.dir / "valkey")
            self.redis_url = self.embedded.start()
        return self.redis_url

    def namespace(self, label: str) -> str:
        name = f"bench-{self.tag}-{label}"
        self.namespaces.append(name)
        return name

    def postgres_server(self) -> str | None:
        """The PostgreSQL server URL given to this run, or None (the reason is kept)."""
        if not self.cfg.database_url:
            self.postgres_problem = "none given (set BENCH_DATABASE_URL)"
            return None
        problem = postgres_reachable(self.cfg.database_url)
        if problem:
            self.postgres_problem = f"PostgreSQL not reachable: {problem}"
            return None
        return self.cfg.database_url

    def new_database(self, label: str) -> str:
        """A fresh database with the schema: scratch PostgreSQL if given, else a SQLite file."""
        from config.settings import normalise_database_url
        from worker.infra.db import Database
        server = self.postgres_server()
        if server:
            scratch = ScratchDatabase(server, f"{self.tag}_{label}")
            self.databases.append(scratch)
            url = normalise_database_url(scratch.create())
            self.database_kind = "postgresql"
        else:
            url = f"sqlite:///{self.dir / f'{label}.sqlite3'}"
        db = Database(url)
        db.init_schema()
        db.dispose()
        return url

    # -- the service's environment and processes ---------------------------------------------------
    def service_env(self, database_url: str, namespace: str, port: int, extra: dict | None = None) -> dict:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("DATABASE_URL", "REDIS_URL", "SENDGRID_", "PLATFORM_WEBHOOK",
                                    "STRIPE_API", "QUEUE_NAMESPACE"))}
        env.update({
            "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET, "ADMIN_TOKEN": ADMIN_TOKEN,
            "DATABASE_URL": database_url, "REDIS_URL": self.redis_url or "",
            "QUEUE_NAMESPACE": namespace, "PORT": str(port), "DUNNING_VAR_DIR": str(self.dir / "var"),
            "EMAIL_OUTBOX_DIR": str(self.dir / "outbox"), "NOTICE_OUTBOX_DIR": str(self.dir / "notices"),
            "LOG_FORMAT": "json", "LOG_LEVEL": self.cfg.log_level,
            "WORKER_PROCESSES": str(self.cfg.worker_processes),
            "WORKER_THREADS": str(self.cfg.worker_threads),
            "PYTHONUNBUFFERED": "1",
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        })
        env.update(extra or {})
        return env

    def spawn(self, name: str, argv: list[str], env: dict) -> Proc:
        proc = Proc(name, argv, env, self.logs)
        self.procs.append(proc)
        return proc

    def start_web(self, name: str, env: dict) -> tuple[Proc, int]:
        port = int(env["PORT"])
        proc = self.spawn(name, [str(BIN / "dunning"), "web", "--host", "127.0.0.1",
                                 "--workers", str(self.cfg.web_workers),
                                 "--threads", str(self.cfg.web_threads)], env)
        wait_http_ok(f"http://127.0.0.1:{port}/healthz", proc)
        return proc, port

    def start_bare(self, env: dict) -> tuple[Proc, int]:
        port = free_port()
        proc = self.spawn("bare", [sys.executable, "-m", "bench.bare_app", "--port", str(port),
                                   "--workers", str(self.cfg.web_workers),
                                   "--threads", str(self.cfg.web_threads)], env)
        wait_http_ok(f"http://127.0.0.1:{port}/healthz", proc)
        return proc, port

    def load(self, name: str, **spec) -> dict:
        """Run the load process (bench.loadgen) with this spec; its JSON result."""
        spec_path, out_path = self.dir / f"{name}.spec.json", self.dir / f"{name}.out.json"
        spec.setdefault("host", "127.0.0.1")
        spec.setdefault("path", "/webhooks/stripe")
        spec.setdefault("secret", WEBHOOK_SECRET)
        spec_path.write_text(json.dumps(spec))
        proc = Proc(f"load-{name}", [sys.executable, "-m", "bench.loadgen", str(spec_path), str(out_path)],
                    dict(os.environ), self.logs)
        try:
            rc = proc.popen.wait(timeout=spec.get("duration", 10) + spec.get("warmup", 0) + 300)
        finally:
            proc.stop()
        if rc != 0:
            raise RuntimeError(f"load process {name} failed (rc={rc}):\n{proc.tail()}")
        return json.loads(out_path.read_text())

    def profiler(self, name: str, proc: Proc):
        """A py-spy recorder on `proc` and its children when --profile is on, else None."""
        if self.profile_dir is None:
            return None
        from bench.profile import Profiler
        return [Profiler(self.profile_dir, name, proc.pid, gil=gil) for gil in (False, True)]

    def end_profile(self, profilers) -> None:
        for profiler in profilers or []:
            self.profiles[profiler.name] = profiler.stop()

    def stop(self, proc: Proc) -> None:
        proc.stop()
        if proc in self.procs:
            self.procs.remove(proc)

    def close(self, keep_dir: bool = False) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()
        if self.redis_url:
            for ns in self.namespaces:
                try:
                    purge_namespace(self.redis_url, ns)
                except Exception as exc:
                    print(f"warning: could not purge Redis namespace {ns}: {exc}", file=sys.stderr)
        if self.embedded is not None:
            self.embedded.stop()
        for scratch in self.databases:
            scratch.drop()
        if not keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
