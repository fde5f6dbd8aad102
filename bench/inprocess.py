"""The worker's Python CPU per event, in one process: steadier than `make bench` on a noisy machine.

`python -m bench.inprocess --pairs 4 OLD_CHECKOUT NEW_CHECKOUT` runs the measure below alternately in
each checkout (each with its own `.venv`, started by `make venv` there) and prints every pair and
the median ratio new/old. The checkouts are any two versions of this project: the measure is read
from this file and run against the other checkout's code, so an older commit needs no copy of it.

The measure (`python bench/inprocess.py CHECKOUT N`): a fresh PostgreSQL database
(`BENCH_DATABASE_URL`), a stub broker, the web app called in process; N `invoice.payment_failed`
(owners known) are POSTed (not timed), then a real dramatiq Worker with one thread drains every
queue (timed: process CPU per event, the emails sent as in production, over HTTP to the SendGrid
fake of bench/sendgrid_fake.py run in a child process so its CPU is not counted; `<kind>_pg`: the
CPU of its PostgreSQL backends, from /proc); then N card changes of the same customers (a
`payment_method.attached`, then a `customer.updated` making that card the default: the open
invoice is retried; per event), then N `invoice.paid` of the same invoices, likewise. A first
round of each warms the caches and is not counted. What it leaves out: Redis (the broker's round
trips), gunicorn.

`--calls` counts instead the Python function calls per event of the worker thread (one run per
checkout): the same code on the same events makes the same calls whatever else loads the machine
(two runs differ by a few calls in ten thousand: 0.09 % at most with 3 events of a kind, a
condition notified or not as the threads meet; one pooled connection, so that which statements it
prepares does not move with the order the messages come in), so it shows a change of 1 % that
the CPU pairs cannot resolve (it weighs every call alike, and a call into C not at all: it reads
how much Python work a change removed, not its seconds). (It
used the file outbox until issue 17's sixth pass: building the MIME file there cost a quarter of
the measure, a cost production, which sends through SendGrid's API, does not have.)
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

ADMIN_URL = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
PROJECT = Path(__file__).resolve().parent.parent  # this checkout: its SendGrid fake serves either side
_FAKE = ("import sys, time; sys.path.insert(0, sys.argv[1]); from bench.sendgrid_fake import SendGridFake; "
         "print(SendGridFake().start().url, flush=True); time.sleep(10 ** 6)")


# What is measured, in this order: failures open the cases the card changes retry and the
# payments close (name in the results -> kind of events).
KINDS = {"payment_failed": "failed", "card_change": "card", "paid": "paid"}


def sendgrid_fake() -> tuple[subprocess.Popen, str]:
    """The SendGrid fake in a child process (its CPU is not the measure's) and its URL."""
    child = subprocess.Popen([sys.executable, "-c", _FAKE, str(PROJECT)], stdout=subprocess.PIPE, text=True)
    return child, child.stdout.readline().strip()


def measure(checkout: Path, events: int, count_calls: bool = False) -> dict[str, float]:
    """CPU ms per event of `checkout`'s code (run in that checkout's interpreter); with `count_calls`,
    the Python function calls per event its worker thread made instead (see `_counting`)."""
    here = Path(__file__).resolve().parent  # bench/ as the script's folder: its modules must not shadow others
    sys.path[:] = [str(checkout)] + [p for p in sys.path if Path(p or ".").resolve() != here]
    os.chdir(checkout)
    import tempfile

    from sqlalchemy import create_engine, text
    admin = create_engine(ADMIN_URL.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT")
    name = "bench_inprocess_" + uuid.uuid4().hex[:10]
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    fake = None
    try:
        fake, fake_url = sendgrid_fake()  # inside the try: a fake that fails to start leaves no database behind
        import falcon.testing

        from config.settings import load_settings
        from tests.support import card_events as fc
        from tests.support.dunning import DAY, T0, failed, know_owner, paid
        from tests.support.helpers import drain, post_event
        from tests.support.services import base_env
        from worker.queue.broker import make_stub_broker
        from worker.runtime import setup
        from worker.web.app import create_app

        from bench.services import BackendCpu

        # One pooled connection: the worker thread takes messages in an order thread timing sets
        # (a card retry runs before or after the next event), and with several connections taken in
        # turn, which one ran a statement first, and so prepared it, moved with that order: CI saw
        # two counts of the same code 8 calls per card change apart. Nothing here checks out two
        # connections at once (an overflow connection would be opened and closed each time: a
        # count hundreds of calls higher).
        env = base_env(Path(tempfile.mkdtemp()), DATABASE_URL=f"{ADMIN_URL.rsplit('/', 1)[0]}/{name}",
                       DATABASE_POOL_SIZE="1", LOG_LEVEL="WARNING", SENDGRID_API_KEY="SG.bench-not-a-real-key",
                       SENDGRID_API_HOST=fake_url, EMAIL_FROM="Billing <billing@example.com>")
        runtime = setup(load_settings(env), make_stub_broker())
        runtime.db.init_schema()
        client = falcon.testing.TestClient(create_app(runtime))

        def of_kind(kind: str, tag: str, i: int) -> list[dict]:
            ids = {"customer": f"cus_{tag}_{i}", "subscription": f"sub_{tag}_{i}"}
            if kind == "failed":
                return [failed(f"in_{tag}_{i}", **ids)]
            if kind == "card":  # a new card, then it becomes the default: the open case's invoice is retried
                return [fc.pm_attached(f"pm_{tag}_{i}", ids["customer"], created=T0 + DAY),
                        fc.customer_updated(ids["customer"], default_pm=f"pm_{tag}_{i}", previous_default=None,
                                            created=T0 + DAY + 1)]
            return [paid(f"in_{tag}_{i}", created=T0 + 9 * DAY, **ids)]

        def timed(kind: str, tag: str) -> tuple[float, float | None]:
            """Process CPU per event of this kind (a card change is two events), and its PostgreSQL
            backends' (None when counting calls, or when /proc does not show the server's)."""
            posted = 0
            for i in range(events):
                for event in of_kind(kind, tag, i):
                    know_owner(runtime, event)
                    assert post_event(client, event).status_code == 200
                    posted += 1
            backends = None if count_calls else BackendCpu(ADMIN_URL, name).start()
            started, calls = time.process_time(), _counting() if count_calls else None
            try:
                drain(runtime, threads=1, timeout=600)
            finally:
                threading.setprofile(None)
            if calls is not None:
                return calls[0] / posted, None
            spent = time.process_time() - started
            database = backends.stop()["seconds"]
            return spent / posted * 1000, None if database is None else database / posted * 1000

        for kind in KINDS.values():
            timed(kind, "warm")
        result = {}
        for key, kind in KINDS.items():
            result[key], database = timed(kind, "run")
            if database is not None:
                result[f"{key}_pg"] = database
        with runtime.db.engine.connect() as conn:  # every email went out through the fake
            statuses = dict(conn.execute(text("SELECT status, count(*) FROM emails GROUP BY status")).all())
        if set(statuses) != {"sent"}:
            raise SystemExit(f"not every email was sent: {statuses}")
        runtime.db.dispose()
        return result
    finally:
        if fake is not None:
            fake.kill()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _counting() -> list[int]:
    """Count the Python function calls made processing messages in the threads started from now on
    (a one-item list, read after they stop). Unlike CPU time, the count does not move with the
    other tenants of the machine: the same code on the same events makes the same calls, give or
    take a few in ten thousand, so a change of 1 % shows. It weighs every call alike (a call into
    C is not counted, nor its time), so it reads how much Python work a change removed, not its
    seconds. Only calls inside `WorkerThread.process_message` count: a worker thread's wait for its
    next message, and the consumer threads' polling, loop as often as timing makes them."""
    from dramatiq.worker import WorkerThread
    processing = WorkerThread.process_message.__code__
    calls = [0]
    inside = threading.local()

    def count(frame, event, _arg):
        if event == "call":
            depth = getattr(inside, "depth", 0) + (frame.f_code is processing)
            inside.depth = depth
            if depth:
                calls[0] += 1
        elif event == "return" and frame.f_code is processing:
            inside.depth -= 1

    threading.setprofile(count)
    return calls


def _run(checkout: Path, events: int, count_calls: bool = False) -> dict[str, float]:
    python = checkout / ".venv" / "bin" / "python"
    out = subprocess.run([str(python), __file__, str(checkout), str(events), *(["calls"] if count_calls else [])],
                         check=True, capture_output=True, text=True).stdout
    return {key: float(value) for key, value in (part.split("=") for part in out.split() if "=" in part)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--calls", action="store_true",
                        help="Python function calls per event instead of CPU time: one run per checkout")
    args = parser.parse_args()
    if args.calls:
        got = {side: _run(checkout.resolve(), args.events, count_calls=True)
               for side, checkout in (("old", args.old), ("new", args.new))}
        for key in KINDS:
            print(f"{key}: old {got['old'][key]:,.0f} / new {got['new'][key]:,.0f} Python calls per event "
                  f"= {got['new'][key] / got['old'][key]:.3f}")
        return
    ratios: dict[str, list[float]] = {}
    for pair in range(1, args.pairs + 1):
        order = [("old", args.old), ("new", args.new)]
        if pair % 2 == 0:
            order.reverse()  # neither side always runs first
        got = {side: _run(checkout.resolve(), args.events) for side, checkout in order}
        shown = [key for key in got["new"] if key in got["old"]]  # "<kind>_pg": its PostgreSQL backends'
        for key in shown:
            ratios.setdefault(key, []).append(got["new"][key] / got["old"][key])
        print(f"pair {pair}: " + "; ".join(f"{key} old {got['old'][key]:.2f} / new {got['new'][key]:.2f} ms "
                                           f"= {ratios[key][-1]:.2f}" for key in shown), flush=True)
    print("median new/old: " + ", ".join(f"{key} {statistics.median(r):.2f}" for key, r in ratios.items()))


if __name__ == "__main__":
    if len(sys.argv) in (3, 4) and not sys.argv[1].startswith("-") and sys.argv[2].isdigit():
        figures = measure(Path(sys.argv[1]).resolve(), int(sys.argv[2]), count_calls=sys.argv[3:] == ["calls"])
        print(" ".join(f"{key}={value:.3f}" for key, value in figures.items()))
    else:
        main()
