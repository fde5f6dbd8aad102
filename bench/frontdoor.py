"""Section "front": the web process under a slow-client attack, and /metrics under scrapers.

Stalled connections: `count` connections that open and then stall -- some send nothing, some
part of a head, some a head and part of a body (Content-Length or chunked), some trickle one
byte per second -- are held for `hold_s` seconds (a connection the server closes is opened
again at once, so the attack lasts the whole time). Meanwhile `events` valid signed events are
posted in an open loop at `rate`/s (each on a new connection, as Stripe delivers), and /healthz
is polled every 0.25 s. Figures: statuses and p50/p99 of the events, /healthz failures, and how
long the server took to close each stalled connection (target: WEB_READ_TIMEOUT + 5 s). The
baseline is the same posting without the attack, in the same run.

Metrics (PostgreSQL, LARGE stored events): the read of the domain figures (what a snapshot
refresh runs) at 0 and at LARGE events, the database's own time (EXPLAIN ANALYZE) and the
wall time; the time of one scrape; and the webhook p99 with no scraper, one and 16 (each
scraping once a second), in alternating rounds.

The functions are plain threads and sockets so tests/integration/test_front_door.py runs the same
scenario against the process it starts.
"""

from __future__ import annotations

import http.client
import json
import selectors
import socket
import statistics
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from worker.intake.signatures import sign

STALLS = (
    b"",  # connect only
    b"POST /webhooks/stripe HTTP/1.1\r\nHost: bench\r\nStripe-Signa",  # part of a head
    b"POST /webhooks/stripe HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
    b"Content-Length: 5000\r\n\r\n{\"id\": \"evt_",  # a head and part of a body
    b"POST /webhooks/stripe HTTP/1.1\r\nHost: bench\r\nTransfer-Encoding: chunked\r\n\r\n40\r\n{\"id\"",
    b"POST /payment-links HTTP/1.1\r\nHost: bench\r\nContent-Length: 100\r\n\r\n{",  # trickles 1 byte/s
)
TRICKLE = 4  # index of the stall that sends one more byte every second


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q * (len(ordered) - 1)))))]


def event_body(event_id: str) -> str:
    return json.dumps({"id": event_id, "object": "event", "type": "customer.updated", "api_version": "2025-03-31.basil",
                       "created": int(time.time()), "livemode": False,
                       "data": {"object": {"id": "cus_" + event_id[4:], "object": "customer"}}})


class StalledConnections(threading.Thread):
    """Holds `count` stalled connections open for `hold_s` seconds; records when the server closes them."""

    def __init__(self, host: str, port: int, count: int, hold_s: float):
        super().__init__(name="stalled-connections", daemon=True)
        self.host, self.port, self.count, self.hold_s = host, port, count, hold_s
        self.closed_after: list[float] = []  # seconds from open to the server's answer or close
        self.answers: Counter = Counter()
        self.still_open_ages: list[float] = []
        self.opened = 0
        self.errors = 0

    def _open(self, sel, seq: int) -> None:
        kind = seq % len(STALLS)
        try:
            sock = socket.create_connection((self.host, self.port), timeout=5)
            sock.setblocking(False)
            if STALLS[kind]:
                sock.send(STALLS[kind])
        except OSError:
            self.errors += 1
            return
        self.opened += 1
        sel.register(sock, selectors.EVENT_READ, {"opened": time.monotonic(), "kind": kind, "last": time.monotonic()})

    def run(self) -> None:
        sel = selectors.DefaultSelector()
        end = time.monotonic() + self.hold_s
        seq = 0
        while time.monotonic() < end:
            while len(sel.get_map()) < self.count and time.monotonic() < end:
                self._open(sel, seq)
                seq += 1
            for key, _ in sel.select(timeout=0.2):
                sock, meta = key.fileobj, key.data
                try:
                    data = sock.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                self.closed_after.append(time.monotonic() - meta["opened"])
                status = data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/1.1 ") else "closed"
                self.answers[status] += 1
                sel.unregister(sock)
                sock.close()
            now = time.monotonic()
            for key in list(sel.get_map().values()):
                if key.data["kind"] == TRICKLE and now - key.data["last"] >= 1.0:
                    key.data["last"] = now
                    try:
                        key.fileobj.send(b" ")
                    except OSError:
                        pass
        now = time.monotonic()
        for key in list(sel.get_map().values()):
            self.still_open_ages.append(now - key.data["opened"])
            sel.unregister(key.fileobj)
            key.fileobj.close()
        sel.close()

    def summary(self, deadline_s: float) -> dict:
        late = [a for a in self.closed_after if a > deadline_s] + [a for a in self.still_open_ages if a > deadline_s]
        return {"held": self.count, "opened": self.opened, "open_errors": self.errors,
                "closed_by_server": len(self.closed_after), "answers": dict(self.answers),
                "max_close_s": round(max(self.closed_after), 2) if self.closed_after else None,
                "p50_close_s": round(statistics.median(self.closed_after), 2) if self.closed_after else None,
                "deadline_s": deadline_s, "late": len(late)}


class HealthPoller(threading.Thread):
    def __init__(self, host: str, port: int, until: float, every: float = 0.25):
        super().__init__(name="healthz-poller", daemon=True)
        self.host, self.port, self.until, self.every = host, port, until, every
        self.latencies: list[float] = []
        self.failures = 0

    def run(self) -> None:
        while time.monotonic() < self.until:
            began = time.monotonic()
            try:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=5)
                conn.request("GET", "/healthz")
                ok = conn.getresponse().status == 200
                conn.close()
            except OSError:
                ok = False
            self.latencies.append(time.monotonic() - began)
            self.failures += 0 if ok else 1
            time.sleep(max(0.0, self.every - (time.monotonic() - began)))

    def summary(self) -> dict:
        return {"polls": len(self.latencies), "failures": self.failures,
                "max_ms": round(max(self.latencies) * 1000, 1) if self.latencies else None}


def post_events(host: str, port: int, secret: str, count: int, rate: float, prefix: str) -> dict:
    """`count` signed events in an open loop at `rate`/s; latency counts from the scheduled send."""
    latencies: list[float] = []
    statuses: Counter = Counter()
    lock = threading.Lock()

    def one(index: int, due: float) -> None:
        body = event_body(f"evt_{prefix}_{index:06d}")
        headers = {"Content-Type": "application/json", "Stripe-Signature": sign(body, secret)}
        try:
            conn = http.client.HTTPConnection(host, port, timeout=30)
            conn.request("POST", "/webhooks/stripe", body=body.encode(), headers=headers)
            resp = conn.getresponse()
            resp.read()
            status = str(resp.status)
            conn.close()
        except OSError as exc:
            status = type(exc).__name__
        with lock:
            latencies.append(time.monotonic() - due)
            statuses[status] += 1

    began = time.monotonic()
    with ThreadPoolExecutor(max_workers=32) as pool:
        for index in range(count):
            due = began + index / rate
            time.sleep(max(0.0, due - time.monotonic()))
            pool.submit(one, index, due)
    return {"events": count, "rate": rate, "statuses": dict(statuses),
            "ok": statuses.get("200", 0), "p50_ms": _ms(percentile(latencies, 0.5)),
            "p99_ms": _ms(percentile(latencies, 0.99)), "max_ms": _ms(max(latencies) if latencies else None)}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def _attack_in_process(host: str, port: int, count: int, hold_s: float, deadline_s: float, out_path: str) -> None:
    attack = StalledConnections(host, port, count, hold_s)
    attack.run()
    with open(out_path, "w") as f:
        json.dump(attack.summary(deadline_s), f)


def stalled_scenario(host: str, port: int, secret: str, *, stalled: int = 100, hold_s: float = 60.0,
                     events: int = 500, rate: float = 20.0, read_timeout: float = 10.0, prefix: str = "front") -> dict:
    """The attack (in its own process, so that its loop does not share the posting threads' GIL)
    with the posting and health polling running through it."""
    import os
    import subprocess
    import sys
    import tempfile
    out = tempfile.NamedTemporaryFile(prefix="stalled-", suffix=".json", delete=False)
    out.close()
    attacker = subprocess.Popen([sys.executable, "-m", "bench.frontdoor", "stall", host, str(port), str(stalled),
                                 str(hold_s), str(read_timeout + 5.0), out.name])
    try:
        time.sleep(min(2.0, hold_s / 10))  # the stalled connections are in place first
        health = HealthPoller(host, port, until=time.monotonic() + hold_s - 2.0)
        health.start()
        posted = post_events(host, port, secret, events, rate, prefix)
        attacker.wait(hold_s + 60)
        health.join(30)
        with open(out.name) as f:
            summary = json.load(f)
    finally:
        if attacker.poll() is None:
            attacker.kill()
            attacker.wait(5)
        os.unlink(out.name)
    return {"events": posted, "healthz": health.summary(), "stalled": summary}


# -- /metrics ----------------------------------------------------------------------------------

def scrape_ms(host: str, port: int, headers: dict | None = None) -> float:
    began = time.perf_counter()
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.request("GET", "/metrics", headers=headers or {})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    if resp.status != 200:
        raise RuntimeError(f"/metrics answered {resp.status}: {body[:200]!r}")
    return (time.perf_counter() - began) * 1000


def refresh_seconds(host: str, port: int) -> float | None:
    """The web process's own figure: how long its last snapshot refresh took."""
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    for line in text.splitlines():
        if line.startswith("dunning_metrics_snapshot_refresh_seconds "):
            return float(line.split()[1])
    return None


def wait_snapshot(host: str, port: int, timeout: float = 300.0) -> float:
    """Seconds until /metrics carries the first domain snapshot (its refresh runs in the background)."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        conn = http.client.HTTPConnection(host, port, timeout=30)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
        if "dunning_metrics_snapshot_age_seconds" in text and "dunning_metrics_snapshot_age_seconds -1" not in text:
            return time.monotonic() - began
        time.sleep(0.5)
    raise RuntimeError("no metrics snapshot within the timeout")


class Scrapers:
    """`count` scrapers, each scraping /metrics once per `every` seconds, in a separate process
    (their threads must not share the posting process's GIL and skew its latencies)."""

    def __init__(self, host: str, port: int, count: int = 16, every: float = 1.0):
        self.host, self.port, self.count, self.every = host, port, count, every
        self.times: list[float] = []
        self.proc = None
        self.out = None

    def __enter__(self):
        import subprocess
        import sys
        import tempfile
        self.out = tempfile.NamedTemporaryFile(prefix="scrapes-", suffix=".json", delete=False)
        self.out.close()
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.frontdoor", "scrape", self.host, str(self.port),
                                      str(self.count), str(self.every), self.out.name])
        time.sleep(0.5)
        return self

    def __exit__(self, *_):
        import os
        import signal
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(35)
        except Exception:  # noqa: BLE001 - never leave it behind
            self.proc.kill()
            self.proc.wait(5)
        try:
            with open(self.out.name) as f:
                self.times = json.load(f)
        except (OSError, ValueError):
            self.times = []
        os.unlink(self.out.name)


def _scrape_forever(host: str, port: int, count: int, every: float, out_path: str) -> None:
    """The scrapers' process: threads scrape until SIGTERM, then the times go to out_path."""
    import signal
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    times: list[float] = []

    def one(index: int) -> None:
        stop.wait(every * index / count)  # spread over the interval, as independent scrapers are
        while not stop.is_set():
            began = time.monotonic()
            try:
                times.append(scrape_ms(host, port))
            except (OSError, RuntimeError):
                pass
            stop.wait(max(0.0, every - (time.monotonic() - began)))

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    while not stop.is_set():
        stop.wait(0.2)
    for thread in threads:
        thread.join(35)
    with open(out_path, "w") as f:
        json.dump(times, f)


def metrics_under_scrapers(host: str, port: int, secret: str, *, rounds: int = 2, events: int = 300,
                           rate: float = 30.0, prefix: str = "scrape") -> dict:
    """Scrape time, and webhook p99 with no scraper, one and 16 (each once a second), in
    alternating rounds. Any scraper triggers the snapshot refresh, so "16 vs none" counts the
    refresh too; "16 vs 1" is what more scrapers add."""
    snapshot_s = wait_snapshot(host, port)
    single = [scrape_ms(host, port) for _ in range(30)]
    p99s: dict[int, list[float]] = {0: [], 1: [], 16: []}
    scrape_times: list[float] = []
    for r in range(rounds):
        for count in (0, 1, 16):
            if count == 0:
                p99s[0].append(post_events(host, port, secret, events, rate, f"{prefix}n{r}")["p99_ms"])
                continue
            with Scrapers(host, port, count=count) as scrapers:
                p99s[count].append(post_events(host, port, secret, events, rate, f"{prefix}{count}s{r}")["p99_ms"])
            scrape_times.extend(scrapers.times)
    none, one, many = (statistics.median(p99s[k]) for k in (0, 1, 16))
    took = refresh_seconds(host, port)
    return {"first_snapshot_s": round(snapshot_s, 1), "refresh_ms": None if took is None else round(took * 1000, 1),
            "scrape_p50_ms": round(statistics.median(single), 2), "scrape_max_ms": round(max(single), 2),
            "scrapes_under_load_p99_ms": _ms(percentile(scrape_times, 0.99) / 1000) if scrape_times else None,
            "webhook_p99_ms_without": none, "webhook_p99_ms_with_1_scraper": one,
            "webhook_p99_ms_with_16_scrapers": many,
            "p99_ratio": round(many / none, 3) if none else None,
            "p99_ratio_16_vs_1": round(many / one, 3) if one else None, "rounds": rounds, "rate": rate}


def measure_front(run) -> dict:
    """The bench section: the stalled-connection scenario, then /metrics over LARGE stored events."""
    from bench.services import free_port
    from bench.setup import WEBHOOK_SECRET
    cfg = run.cfg
    smoke = cfg.mode == "smoke"
    read_timeout = 3 if smoke else 10
    shape = dict(stalled=20, hold_s=12.0, events=60, rate=20.0) if smoke else \
        dict(stalled=100, hold_s=60.0, events=500, rate=20.0)
    out: dict = {"read_timeout_s": read_timeout, **{k: v for k, v in shape.items()}}
    database_url = run.new_database("front")
    env = run.service_env(database_url, run.namespace("front"), free_port(),
                          {"WEB_READ_TIMEOUT": str(read_timeout), "LOG_LEVEL": "WARNING"})
    web, port = run.start_web("web-front", env)
    try:
        out["baseline"] = post_events("127.0.0.1", port, WEBHOOK_SECRET, shape["events"], shape["rate"], f"b{run.tag}")
        out["attack"] = stalled_scenario("127.0.0.1", port, WEBHOOK_SECRET, read_timeout=read_timeout,
                                         prefix=f"a{run.tag}", **shape)
    finally:
        run.stop(web)
    base, attacked = out["baseline"]["p99_ms"], out["attack"]["events"]["p99_ms"]
    out["p99_ratio"] = round(attacked / base, 3) if base and attacked else None

    out.update(measure_front_metrics(run))
    return out


def domain_read_ms(url: str, repeats: int = 20) -> tuple[float, float, int]:
    """One read of the domain figures (what a snapshot refresh runs): the median wall time in
    process, the median of the database's own execution time of its statements (EXPLAIN
    ANALYZE), and the pages they touch (BUFFERS: what could grow with the tables, free of the
    machine's scheduling noise)."""
    from sqlalchemy import event as sa_event

    from worker.infra.db import Database
    from worker.observe.metrics import DomainCollector
    db = Database(url)
    try:
        collector = DomainCollector(db)
        db.tables  # reflected first: its catalog queries are not part of a read
        statements: list = []
        capture = lambda conn, cursor, stmt, params, *_: statements.append((stmt, params))  # noqa: E731
        sa_event.listen(db.engine, "before_cursor_execute", capture)
        list(collector.collect())  # the connection made once; its statements captured
        sa_event.remove(db.engine, "before_cursor_execute", capture)
        wall, server = [], []
        for _ in range(repeats):
            began = time.perf_counter()
            list(collector.collect())
            wall.append((time.perf_counter() - began) * 1000)
        selects = [(stmt, params) for stmt, params in statements if stmt.lstrip().upper().startswith("SELECT")]
        with db.engine.connect() as conn:
            for _ in range(repeats):
                plans = [conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + stmt, params).scalar()[0]
                         for stmt, params in selects]
                server.append(sum(plan["Execution Time"] for plan in plans))
            pages = sum(plan["Plan"]["Shared Hit Blocks"] + plan["Plan"]["Shared Read Blocks"] for plan in plans)
    finally:
        db.dispose()
    return round(statistics.median(wall), 2), round(statistics.median(server), 3), pages


def measure_front_metrics(run) -> dict:
    """/metrics over LARGE stored events (PostgreSQL): the domain read at 0 events and at LARGE,
    one scrape, and webhook p99 with and without scrapers."""
    from bench.services import free_port
    from bench.setup import WEBHOOK_SECRET
    if not run.postgres_server():
        return {"metrics": {"skipped": f"needs PostgreSQL: {run.postgres_problem}"}}
    from bench.scaling import _load_events
    smoke = run.cfg.mode == "smoke"
    out: dict = {}
    url = run.new_database("front_metrics")
    rows = run.cfg.scale_large
    empty_ms = domain_read_ms(url)
    out["metrics_rows"] = rows
    out["metrics_load_s"] = round(_load_events(url, 1, rows), 1)
    large_ms = domain_read_ms(url)
    env = run.service_env(url, run.namespace("front-metrics"), free_port(), {"LOG_LEVEL": "WARNING"})
    web, port = run.start_web("web-front-metrics", env)
    try:
        out["metrics"] = metrics_under_scrapers("127.0.0.1", port, WEBHOOK_SECRET, rounds=1 if smoke else 2,
                                                events=60 if smoke else 300, prefix=f"m{run.tag}")
    finally:
        run.stop(web)
    out["metrics"].update(domain_read_ms_empty=empty_ms[0], domain_read_ms_large=large_ms[0],
                          domain_read_server_ms_empty=empty_ms[1], domain_read_server_ms_large=large_ms[1],
                          domain_read_pages_empty=empty_ms[2], domain_read_pages_large=large_ms[2],
                          domain_read_ratio=round(large_ms[1] / empty_ms[1], 3) if empty_ms[1] else None)
    return out

if __name__ == "__main__":
    import sys
    if len(sys.argv) == 8 and sys.argv[1] == "stall":
        _attack_in_process(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6]),
                           sys.argv[7])
    elif len(sys.argv) == 7 and sys.argv[1] == "scrape":
        _scrape_forever(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), sys.argv[6])
