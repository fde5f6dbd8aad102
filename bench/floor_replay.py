"""Replay captured statements with raw prepared psycopg (one process of the floor scenario).

    python -m bench.floor_replay SPEC.json

SPEC names the PostgreSQL URL, the templates (bench.floor_capture's output), the units this process
replays (event type, unit number) and the threads. Every unit is its template's transactions with
its ids rewritten (`ids_for`): the same statements in the same transactions, each statement
prepared on its connection (`prepare=True`), every result fetched, as the service would.

Protocol with the parent (bench/floor.py), one line each on stdin/stdout: this process prepares
the parameters and opens its connections, prints `ready`, waits for `go`, replays, prints its
result as JSON, then waits for `exit` (so the parent can read its CPU time before it ends).
"""

from __future__ import annotations

import json
import queue
import re
import sys
import threading
import time

from bench.sql_trace import decode


def ids_for(capture: dict, pool_size: int):
    """A function (unit) -> (text -> text) giving each unit ids of its own.

    Ids of the capture's events, invoices and the rows the service made (prefix_<28 hex>) get
    the unit's suffix; the customer key becomes the unit's pool customer (unit % pool_size), so
    a customer's events share its rows as in the e2e mix."""
    pattern = re.compile(r"(b" + re.escape(capture["tag"]) + r"\d{8})|\b([a-z]+_[0-9a-f]{28})\b")
    customer = capture["customer_key"]

    def for_unit(unit: int):
        pool = f"{customer}p{unit % pool_size}"

        def swap(match: re.Match) -> str:
            token = match.group(0)
            return pool if token == customer else f"{token}x{unit}"
        return lambda text: pattern.sub(swap, text)
    return for_unit


def prepared_unit(template: dict, text) -> list[tuple[bool, str, list]]:
    """[(autocommit, end, [(sql, params, many)])] with this unit's parameters decoded."""
    return [(tx["autocommit"], tx["end"], [(sql, decode(params, text), many)
                                           for sql, params, many in tx["statements"]])
            for tx in template["transactions"]]


def replay_unit(conn, unit) -> None:
    import psycopg
    for autocommit, end, statements in unit:
        if autocommit:
            _run(conn, statements)
            continue
        with conn.transaction():
            _run(conn, statements)
            if end == "rollback":
                raise psycopg.Rollback()


def _run(conn, statements) -> None:
    for sql, params, many in statements:
        if many:
            with conn.cursor() as cur:
                cur.executemany(sql, params)
            continue
        cur = conn.execute(sql, params, prepare=True)
        if cur.description is not None:
            cur.fetchall()


def run_units(url: str, units: list[list], threads: int, start: threading.Event | None = None,
              until_exit: bool = False) -> dict:
    """Replay `units` on `threads` connections (each its own thread); counts and the first error.

    With `start`: print `ready`, wait for `go`. With `until_exit`: print the result and keep the
    connections (their backends) open until `exit`, so the parent reads their CPU time first."""
    import psycopg
    work: queue.Queue = queue.Queue()
    for unit in units:
        work.put(unit)
    conns = [psycopg.connect(url, autocommit=True) for _ in range(threads)]
    done = {"units": 0, "errors": 0, "first_error": None}
    lock = threading.Lock()

    def worker(conn):
        if start is not None:
            start.wait()
        while True:
            try:
                unit = work.get_nowait()
            except queue.Empty:
                return
            try:
                replay_unit(conn, unit)
                ok = True
            except Exception as exc:  # noqa: BLE001 - counted and reported, never silent
                ok = False
                error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            with lock:
                done["units"] += 1
                if not ok:
                    done["errors"] += 1
                    done["first_error"] = done["first_error"] or error[:300]

    pool = [threading.Thread(target=worker, args=(c,), daemon=True) for c in conns]
    for t in pool:
        t.start()
    began = time.monotonic()
    if start is not None:
        print("ready", flush=True)
        sys.stdin.readline()  # "go"
        began = time.monotonic()
        start.set()
    for t in pool:
        t.join()
    done["elapsed_s"] = time.monotonic() - began
    if until_exit:
        print(json.dumps(done), flush=True)
        sys.stdin.readline()  # "exit"
    for c in conns:
        c.close()
    return done


def main(argv: list[str]) -> int:
    spec = json.loads(open(argv[0]).read())
    capture = json.loads(open(spec["capture"]).read())
    ids = ids_for(capture, spec["pool_size"])
    units = [prepared_unit(capture["templates"][kind], ids(unit)) for kind, unit in spec["units"]]
    run_units(spec["url"], units, spec["threads"], threading.Event(), until_exit=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
