"""The load process: posts signed Stripe events over keep-alive HTTP/1.1 and times each answer.

Run as its own process (`python -m bench.loadgen SPEC.json RESULT.json`) so the client's CPU is
never counted in the server's. It is a few dozen lines of asyncio streams on purpose: a general
HTTP client library costs several times more CPU per request than the server under test on a
2-core machine, and would then measure itself. Two modes:

- closed loop: `concurrency` connections, each posting as soon as its previous answer arrives,
  for `duration` seconds or until the listed bodies run out (peak throughput);
- alternate: closed-loop slices on several servers in turn (a baseline and the service), so
  both see the same background noise on a shared machine;
- open loop: requests start on a fixed schedule (`rate` per second) whatever the answers do, and
  latency counts from the scheduled start, so a stalled server shows up in the tail (no
  coordinated omission).

Bodies are either one template whose marks are replaced by a fresh id per request, or a list
(JSON lines) posted in order. Every body is signed right before it is sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Spec:
    host: str
    path: str
    secret: str
    mode: str  # closed | open | alternate
    duration: float
    port: int = 0
    concurrency: int = 16
    rate: float = 0.0
    template: str | None = None
    marks: list[str] = field(default_factory=list)
    id_prefix: str = "x"
    bodies_file: str | None = None
    record: bool = False  # keep each request's (index, sent, done, status) for matching later
    warmup: float = 0.0  # seconds of closed-loop traffic first, not recorded
    # alternate mode: closed-loop slices of duration/rounds on each of these ports in turn, so a
    # baseline and the service see the same background noise (ports: {"name": port})
    ports: dict[str, int] = field(default_factory=dict)
    rounds: int = 1


class Bodies:
    """Hands out request bodies: a fresh-id template, or the listed bodies in order."""

    def __init__(self, spec: Spec):
        self.spec = spec
        self.count = 0
        self.listed: list[str] | None = None
        if spec.bodies_file:
            self.listed = [json.loads(line)["body"] for line in Path(spec.bodies_file).read_text().splitlines()
                           if line.strip()]

    def next(self) -> tuple[int, str] | None:
        index = self.count
        self.count += 1
        if self.listed is not None:
            return (index, self.listed[index]) if index < len(self.listed) else None
        body = self.spec.template
        for n, mark in enumerate(self.spec.marks):
            body = body.replace(mark, f"{self.spec.id_prefix}{n}{index:0{len(mark) - len(self.spec.id_prefix) - 1}d}")
        return index, body


class Signer:
    """Stripe-Signature headers: `t=<unix>,v1=<HMAC-SHA256("<t>.<body>")>`."""

    def __init__(self, secret: str):
        self.key = secret.encode()

    def header(self, body: bytes) -> str:
        stamp = int(time.time())
        mac = hmac.new(self.key, str(stamp).encode() + b"." + body, hashlib.sha256).hexdigest()
        return f"t={stamp},v1={mac}"


class Connection:
    """One keep-alive HTTP/1.1 connection that sends a POST and reads one whole answer."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def request(self, raw: bytes) -> int:
        if self.writer is None:
            await self.open()
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length, close = 0, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        if length:
            await self.reader.readexactly(length)
        if close:
            self.close()
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def build_request(spec: Spec, signer: Signer, body: str) -> bytes:
    data = body.encode()
    return (f"POST {spec.path} HTTP/1.1\r\nHost: {spec.host}:{spec.port}\r\n"
            f"Content-Type: application/json\r\nStripe-Signature: {signer.header(data)}\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode() + data


class Recorder:
    def __init__(self, keep: bool):
        self.latencies: list[float] = []
        self.statuses: dict[str, int] = {}
        self.errors = 0
        self.keep = keep
        self.records: list[tuple[int, float, float, int]] = []
        self.first_sent: float | None = None
        self.last_done: float | None = None

    def add(self, index: int, sent_wall: float, latency: float, status: int) -> None:
        done = sent_wall + latency
        self.latencies.append(latency)
        self.statuses[str(status)] = self.statuses.get(str(status), 0) + 1
        self.first_sent = sent_wall if self.first_sent is None else min(self.first_sent, sent_wall)
        self.last_done = done if self.last_done is None else max(self.last_done, done)
        if self.keep:
            self.records.append((index, sent_wall, done, status))


async def _send(conn: Connection, raw: bytes) -> int:
    try:
        return await conn.request(raw)
    except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
        conn.close()
        return 0  # connection error: counted as status 0


async def closed_loop(spec: Spec, bodies: Bodies, signer: Signer, rec: Recorder | None,
                      duration: float) -> float:
    deadline = time.perf_counter() + duration
    started = time.perf_counter()

    async def one_client():
        conn = Connection(spec.host, spec.port)
        try:
            while time.perf_counter() < deadline:
                item = bodies.next()
                if item is None:
                    return
                index, body = item
                raw = build_request(spec, signer, body)
                wall, t0 = time.time(), time.perf_counter()
                status = await _send(conn, raw)
                if rec is not None:
                    rec.add(index, wall, time.perf_counter() - t0, status)
                if status == 0:
                    await asyncio.sleep(0.01)
        finally:
            conn.close()

    await asyncio.gather(*(one_client() for _ in range(spec.concurrency)))
    return time.perf_counter() - started


async def open_loop(spec: Spec, bodies: Bodies, signer: Signer, rec: Recorder) -> float:
    """Start request i at start + i/rate; latency counts from that scheduled instant."""
    idle: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(spec.concurrency):
        idle.put_nowait(Connection(spec.host, spec.port))
    tasks: set[asyncio.Task] = set()
    interval = 1.0 / spec.rate
    start_perf, start_wall = time.perf_counter(), time.time()

    async def one(index: int, body: str, due: float):
        conn = await idle.get()
        try:
            raw = build_request(spec, signer, body)
            status = await _send(conn, raw)
            rec.add(index, start_wall + (due - start_perf), time.perf_counter() - due, status)
        finally:
            idle.put_nowait(conn)

    i = 0
    while True:
        due = start_perf + i * interval
        if due - start_perf >= spec.duration:
            break
        item = bodies.next()
        if item is None:
            break
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(item[0], item[1], due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        i += 1
    if tasks:
        await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start_perf
    while not idle.empty():
        idle.get_nowait().close()
    return elapsed


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, int(round(q / 100.0 * len(ordered) + 0.5)) - 1))
    return ordered[k]


def summarize(rec: Recorder, elapsed: float) -> dict:
    ok = sum(n for s, n in rec.statuses.items() if s.startswith("2"))
    ms = [x * 1000 for x in rec.latencies]
    return {
        "requests": len(rec.latencies), "ok": ok, "statuses": rec.statuses, "elapsed_s": round(elapsed, 3),
        "rps": round(ok / elapsed, 1) if elapsed > 0 else 0.0,
        "p50_ms": _r(percentile(ms, 50)), "p90_ms": _r(percentile(ms, 90)),
        "p99_ms": _r(percentile(ms, 99)), "max_ms": _r(max(ms) if ms else None),
        "first_sent": rec.first_sent, "last_done": rec.last_done,
        "records": rec.records if rec.keep else None,
    }


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


async def alternate(spec: Spec) -> dict:
    """Each round: a closed-loop slice on every named port in turn; one summary per name."""
    bodies, signer = Bodies(spec), Signer(spec.secret)
    recorders = {name: Recorder(False) for name in spec.ports}
    elapsed = {name: 0.0 for name in spec.ports}
    for name, port in spec.ports.items():  # warm every target first
        if spec.warmup > 0:
            await closed_loop(_on(spec, port), bodies, signer, None, spec.warmup)
    slice_s = spec.duration / max(1, spec.rounds) / max(1, len(spec.ports))
    for _ in range(max(1, spec.rounds)):
        for name, port in spec.ports.items():
            elapsed[name] += await closed_loop(_on(spec, port), bodies, signer, recorders[name], slice_s)
    return {name: summarize(recorders[name], elapsed[name]) for name in spec.ports}


def _on(spec: Spec, port: int) -> Spec:
    from dataclasses import replace
    return replace(spec, port=port)


async def run(spec: Spec) -> dict:
    if spec.mode == "alternate":
        return await alternate(spec)
    bodies = Bodies(spec)
    signer = Signer(spec.secret)
    if spec.warmup > 0:
        await closed_loop(spec, bodies, signer, None, spec.warmup)
    rec = Recorder(spec.record)
    if spec.mode == "closed":
        elapsed = await closed_loop(spec, bodies, signer, rec, spec.duration)
    else:
        elapsed = await open_loop(spec, bodies, signer, rec)
    return summarize(rec, elapsed)


def main(argv: list[str]) -> int:
    spec = Spec(**json.loads(Path(argv[0]).read_text()))
    result = asyncio.run(run(spec))
    Path(argv[1]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
