"""Start and stop what the bench runs: service processes, databases, the Redis namespace.

Every process is started in its own process group and killed as a group (gunicorn's and
dramatiq's children too); every database is one this run created and drops; every Redis key
is under this run's namespace. Nothing belonging to anyone else is touched.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

from config.settings import PROJECT_ROOT

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A subprocess in its own process group, logging to a file, stopped as a group."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(argv, env=env, cwd=str(PROJECT_ROOT), stdout=self._log,
                                      stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the leader (gunicorn and dramatiq stop their own children), then SIGKILL the group."""
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        _signal_group(self.popen.pid, signal.SIGKILL)  # stragglers of the group, if any
        try:
            self.popen.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def wait_http_ok(url: str, proc: Proc, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited (rc={proc.popen.returncode}):\n{proc.tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{proc.name} did not answer {url} within {timeout:.0f}s:\n{proc.tail()}")


# -- memory ---------------------------------------------------------------------------------------
def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(x) for x in (task / "children").read_text().split()]
        except (OSError, ValueError):
            pass
    return found


def process_tree(pid: int) -> list[int]:
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += _children(current)
    return tree


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM (the kernel's peak resident set) of one process, in MB; None when unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError):
        return None
    return None


def tree_cpu_seconds(proc: "Proc") -> float:
    """User + system CPU seconds of a process and its live descendants (and children it reaped).

    CPU per request is steadier than requests per second on a shared machine: other tenants
    slow the clock, not the work."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in process_tree(proc.pid):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / tick


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def tree_peak_rss(proc: Proc) -> list[dict]:
    """Peak RSS of a process and every descendant (read before stopping: VmHWM dies with it)."""
    out = []
    for pid in process_tree(proc.pid):
        rss = peak_rss_mb(pid)
        if rss is not None:
            out.append({"pid": pid, "role": "parent" if pid == proc.pid else "child",
                        "cmd": _cmdline(pid)[:80], "peak_rss_mb": rss})
    return out


# -- PostgreSQL -----------------------------------------------------------------------------------
def psycopg_url(url: str) -> str:
    for prefix in ("postgresql+psycopg://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix):]
    return url


def postgres_reachable(url: str) -> str | None:
    """None when a connection works, else the reason (one line)."""
    import psycopg
    try:
        with psycopg.connect(psycopg_url(url), connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return None
    except Exception as exc:  # any failure means: no PostgreSQL for this run
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


class ScratchDatabase:
    """A database of our own on the given server: CREATE DATABASE bench_<random>, dropped at the end."""

    def __init__(self, server_url: str, label: str):
        self.admin_url = psycopg_url(server_url)
        self.name = f"bench_{label}_{uuid.uuid4().hex[:10]}"
        base = self.admin_url.split("?", 1)[0].rsplit("/", 1)[0]
        query = ("?" + self.admin_url.split("?", 1)[1]) if "?" in self.admin_url else ""
        self.url = f"{base}/{self.name}{query}"

    def create(self) -> str:
        import psycopg
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')
        return self.url

    def drop(self) -> None:
        import psycopg
        try:
            with psycopg.connect(self.admin_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        except Exception as exc:
            print(f"warning: could not drop database {self.name}: {exc}", file=sys.stderr)


# -- Redis ----------------------------------------------------------------------------------------
def purge_namespace(redis_url: str, namespace: str) -> int:
    """Delete this run's keys (namespace prefix only; never a flush)."""
    import redis
    client = redis.Redis.from_url(redis_url)
    deleted = 0
    try:
        for key in client.scan_iter(f"{namespace}:*", count=1000):
            deleted += client.delete(key)
        for key in client.scan_iter(f"{namespace}", count=10):
            deleted += client.delete(key)
    finally:
        client.close()
    return deleted


OBSERVER = "dunning-bench-observer"  # application_name of the bench's own connections (not measured)


def observer_url(url: str) -> str:
    """`url` with the bench's application_name: its polling is not counted as the service's CPU."""
    if not url.startswith(("postgresql", "postgres")):
        return url
    return f"{url}{'&' if '?' in url else '?'}application_name={OBSERVER}"


def process_cpu_seconds(pid: int) -> float | None:
    """utime + stime of one process (a PostgreSQL backend), None when it is gone or unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def backend_pids(server_url: str, database: str) -> list[int]:
    """The PostgreSQL backends serving `database` (pg_stat_activity), the bench's own left out."""
    import psycopg
    with psycopg.connect(observer_url(psycopg_url(server_url)), autocommit=True) as conn:
        rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()"
                            " AND coalesce(application_name, '') <> %s", (database, OBSERVER)).fetchall()
    return [pid for (pid,) in rows]


class BackendCpu:
    """CPU seconds the PostgreSQL backends of one database used between `start()` and `stop()`.

    Read from /proc/<pid>/stat (the server runs on this machine): backends that start in between
    count from zero; one that ends in between is lost (pools keep theirs open, so rare)."""

    def __init__(self, server_url: str, database: str):
        self.server_url, self.database = server_url, database
        self.before: dict[int, float] = {}
        self.readable = True

    def start(self) -> "BackendCpu":
        self.before = self._read()
        return self

    def _read(self) -> dict[int, float]:
        found = {}
        for pid in backend_pids(self.server_url, self.database):
            cpu = process_cpu_seconds(pid)
            if cpu is None:
                self.readable = False  # a server on another machine: /proc does not have it
            else:
                found[pid] = cpu
        return found

    def stop(self) -> dict:
        after = self._read()
        used = sum(cpu - self.before.get(pid, 0.0) for pid, cpu in after.items())
        return {"seconds": used if self.readable else None, "backends": len(after)}


def database_name(url: str) -> str:
    return url.split("?", 1)[0].rsplit("/", 1)[1]
