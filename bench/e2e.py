"""Section 2: webhook to email, against a no-op actor on the same broker and worker shape.

Baseline: `dramatiq --processes P --threads T bench.noop_actors` drains N messages sent from here.
Pipeline: `dunning web` and `dunning worker` (same P and T) take a realistic mix over HTTP; an
event is done when its row is final and, for a failed payment, when its payment-failed email
has reached the SendGrid fake. Latency runs from the row's received_at (the webhook's receipt)
to the email's arrival at the fake, both on this machine's clock.

Idle: each worker pool's CPU per second with nothing to do (its consumers polling Redis), read
over `idle_seconds` once it has drained: what a quiet service costs its host.
"""

from __future__ import annotations

import json
import time
from datetime import timezone

from bench.events import EventFactory, Planned
from bench.loadgen import percentile
from bench.services import (BIN, BackendCpu, database_name, free_port, observer_url, tree_cpu_seconds,
                            tree_peak_rss)

FINAL = ("processed", "ignored", "failed")
NA = "n/a (no emails produced)"


# -- the no-op baseline ---------------------------------------------------------------------------
def measure_noop(run) -> dict:
    import dramatiq
    import redis

    from worker.queue.broker import make_redis_broker

    cfg = run.cfg
    namespace = run.namespace("noop")
    env = run.service_env(f"sqlite:///{run.dir / 'noop-unused.sqlite3'}", namespace, 0,
                          {"BENCH_NOOP_NAMESPACE": namespace})
    proc = run.spawn("noop-worker", [str(BIN / "dramatiq"), "--processes", str(cfg.worker_processes),
                                     "--threads", str(cfg.worker_threads), "bench.noop_actors"], env)
    broker = make_redis_broker(run.redis_url, namespace)
    client = redis.Redis.from_url(run.redis_url)

    def noop(event_id: str) -> None:
        """The same actor as bench.noop_actors, declared here only to send to it."""

    actor = dramatiq.actor(broker=broker, queue_name="events", actor_name="process_event")(noop)

    def drained() -> bool:
        return (client.llen(f"{namespace}:events") == 0
                and client.hlen(f"{namespace}:events.msgs") == 0)

    try:
        for i in range(cfg.worker_processes * 4):  # every worker process up and consuming
            actor.send(f"evt_probe{i}")
        _wait(drained, 60, proc, "the no-op workers to start")
        cpu_before = tree_cpu_seconds(proc)
        started = time.time()
        for i in range(cfg.noop_messages):
            actor.send(f"evt_noop{i:08d}")
        sent = time.time()
        _wait(drained, 120, proc, "the no-op workers to drain", interval=0.005)
        elapsed = time.time() - started
        cpu = tree_cpu_seconds(proc) - cpu_before
        rss = tree_peak_rss(proc)
        idle = idle_cpu_ms_per_second(proc, cfg.idle_seconds)  # after the timed drain: its consumers start hot
    finally:
        run.stop(proc)
        broker.close()
        client.close()
    return {"messages": cfg.noop_messages, "elapsed_s": round(elapsed, 3),
            "rate": round(cfg.noop_messages / elapsed, 1), "enqueue_s": round(sent - started, 3),
            "worker_cpu_ms_per_message": round(cpu * 1000 / cfg.noop_messages, 3),
            "idle_cpu_ms_per_s": idle, "rss": rss}


def idle_cpu_ms_per_second(proc, seconds: float, settle: float = 1.0) -> float:
    """CPU ms per second of `proc`'s process tree over `seconds`, after `settle` seconds of calm
    (a consumer that just had work backs off to its idle poll over the first second)."""
    time.sleep(settle)
    before = tree_cpu_seconds(proc)
    time.sleep(seconds)
    return round((tree_cpu_seconds(proc) - before) * 1000 / seconds, 1)


def _wait(predicate, timeout: float, proc, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited while waiting for {what}:\n{proc.tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# -- the pipeline ---------------------------------------------------------------------------------
class Batch:
    """Planned events posted together, and how to tell when the service is done with them."""

    def __init__(self, planned: list[Planned]):
        self.planned = planned
        self.ids = [p.event_id for p in planned]
        self.failed_invoices = {p.invoice_id for p in planned if p.type == "invoice.payment_failed"}
        self.invoices = {p.invoice_id for p in planned if p.invoice_id}

    def write(self, path) -> str:
        path.write_text("".join(json.dumps({"id": p.event_id, "body": p.body}) + "\n" for p in self.planned))
        return str(path)


def batch_customers(factory: EventFactory, events: int) -> list[str]:
    """The customers a batch of `events` is spread over: a quarter as many, 5 to 200 (the peer
    section, bench/peer.py, posts its events to as many)."""
    return [factory.new_customer_id() for _ in range(max(5, min(200, events // 4)))]


def _statuses(db, ids: list[str]) -> dict[str, dict]:
    from sqlalchemy import select
    events = db.table("events")
    found: dict[str, dict] = {}
    with db.engine.connect() as conn:
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            stmt = select(events.c.id, events.c.status, events.c.received_at, events.c.processed_at) \
                .where(events.c.id.in_(chunk))
            for row in conn.execute(stmt).mappings():
                found[row["id"]] = dict(row)
    return found


def _epoch(moment) -> float | None:
    return None if moment is None else moment.replace(tzinfo=timezone.utc).timestamp()


def stored_only(db, batch: Batch) -> Batch:
    """The batch without the events the webhook refused (a 503 when the database was out of
    connections, say: nothing stored, the load does not retry as Stripe would): waiting for those
    would wait for ever."""
    stored = _statuses(db, batch.ids)
    return batch if len(stored) == len(batch.ids) else Batch([p for p in batch.planned if p.event_id in stored])


def wait_batch(db, batch: Batch, fake, proc_checks, timeout: float, email_timeout: float,
               quiet: float = 3.0) -> dict:
    """Wait until every event is final and its emails are in (or stop coming); the outcome.

    Emails go out after the handler's commit, so they trail the rows: once every row is final
    this waits for every expected payment-failed email, or `quiet` seconds without a new one, or
    `email_timeout` seconds when none came at all (the outcome then shows no emails)."""
    deadline = time.monotonic() + timeout
    last_change, seen, timed_out, all_final_at = time.monotonic(), -1, False, None
    while True:
        for proc in proc_checks:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited during the end-to-end run:\n{proc.tail()}")
        rows = _statuses(db, batch.ids)
        final = sum(1 for r in rows.values() if r["status"] in FINAL)
        mailed = {i for m in fake.snapshot() if m.template == "payment-failed"
                  for i in m.invoices if i in batch.failed_invoices}
        if len(mailed) != seen:
            seen, last_change = len(mailed), time.monotonic()
        if final == len(batch.ids):
            all_final_at = all_final_at or time.monotonic()
            if len(mailed) >= len(batch.failed_invoices):
                break
            if seen > 0 and time.monotonic() - last_change > quiet:
                break
            if seen == 0 and time.monotonic() - all_final_at > email_timeout:
                break
        if time.monotonic() > deadline:
            timed_out = True
            break
        time.sleep(0.1)
    return outcome(batch, rows, fake, timed_out)


def outcome(batch: Batch, rows: dict[str, dict], fake, timed_out: bool) -> dict:
    by_status: dict[str, int] = {}
    for r in rows.values():
        by_status[r["status"]] = by_status.get(r["status"], 0) + 1
    received = {p.invoice_id: _epoch(rows[p.event_id]["received_at"]) for p in batch.planned
                if p.type == "invoice.payment_failed" and p.event_id in rows}
    first_mail: dict[str, float] = {}
    last_mail_at = None
    mails = 0
    for m in fake.snapshot():
        if any(i in batch.invoices for i in m.invoices):
            mails += 1
            last_mail_at = m.at if last_mail_at is None else max(last_mail_at, m.at)
        # an account email (several failed invoices of one customer) is each one's first email
        for invoice in (m.invoices if m.template == "payment-failed" else ()):
            if invoice in batch.failed_invoices:
                first_mail[invoice] = min(m.at, first_mail.get(invoice, m.at))
    latencies = [(first_mail[i] - received[i]) * 1000 for i in first_mail if received.get(i) is not None]
    processed = [_epoch(r["processed_at"]) for r in rows.values() if r["processed_at"] is not None]
    done_at = max([x for x in (last_mail_at, max(processed) if processed else None) if x is not None],
                  default=None)
    return {
        "events": len(batch.ids), "statuses": by_status, "timed_out": timed_out,
        "payment_failed": len(batch.failed_invoices), "payment_failed_emails": len(first_mail),
        "emails_for_batch": mails, "done_at": done_at,
        "p50_ms": _r(percentile(latencies, 50)), "p99_ms": _r(percentile(latencies, 99)),
        "max_ms": _r(max(latencies) if latencies else None),
    }


def _r(x):
    return None if x is None else round(x, 1)


def _brief(out: dict) -> dict:
    return {k: v for k, v in out.items() if k != "done_at"}


def _why_no_emails(out: dict, fake) -> str:
    reached = len(fake.snapshot())
    return (f"{out['payment_failed']} payment_failed events, statuses {out['statuses']}, "
            f"{reached} request(s) reached the SendGrid fake"
            + (" (none with X-Dunning-Template: payment-failed)" if reached else "")
            + (", timed out" if out["timed_out"] else ""))


def measure_e2e(run, fake) -> dict:
    from worker.infra.db import Database

    cfg = run.cfg
    database_url = run.new_database("e2e")
    env = run.service_env(database_url, run.namespace("e2e"), free_port(), {
        "SENDGRID_API_KEY": "SG.bench-not-a-real-key", "SENDGRID_API_HOST": fake.url,
        "EMAIL_FROM": "Billing <billing@example.com>",
        # The day-0 hold (default 5 s) is a wait, not work: events/s and receipt->email are measured
        # without it, as the floor is (BENCH_FIRST_EMAIL_DELAY to measure with one).
        "FIRST_EMAIL_DELAY_SECONDS": str(cfg.first_email_delay),
    })
    db = Database(observer_url(database_url))  # its polling is not the service's CPU
    factory = EventFactory(run.tag)
    web, port = run.start_web("web-e2e", env)
    worker = run.spawn("worker-e2e", [str(BIN / "dunning"), "worker"], env)
    checks = [web, worker]
    result: dict = {"database": run.database_kind, "processes": cfg.worker_processes,
                    "threads": cfg.worker_threads}
    try:
        # Warm-up (not timed): the customers, and failures the batch's paid events will settle.
        customers = batch_customers(factory, cfg.e2e_events)
        settle_count = int(cfg.e2e_events * 0.25) + 2 * cfg.worker_processes + 4  # the kinds warm-up pays some
        warm_failures = [factory.payment_failed(customers[i % len(customers)]) for i in range(settle_count)]
        warm = Batch([factory.customer_created(c) for c in customers] + warm_failures)
        run.load("e2e-warmup", port=port, mode="closed", duration=600, concurrency=cfg.concurrency,
                 bodies_file=warm.write(run.dir / "warmup.jsonl"))
        warm = stored_only(db, warm)
        warm_out = wait_batch(db, warm, fake, checks, 300, cfg.email_timeout)
        result["warmup"] = _brief(warm_out)
        if warm_out["payment_failed_emails"] == 0:
            result.update(status=NA, reason=_why_no_emails(warm_out, fake))
            return result
        # Every other event type too, so first-use imports and caches are not timed: twice per worker
        # process (which process takes a message is the broker's choice), each with its own customers.
        rounds = 2 * cfg.worker_processes
        kinds = Batch([event for i, last in enumerate(warm_failures[-rounds:]) for event in (
            factory.paid(last.customer_id, last.invoice_id), factory.customer_updated(customers[i % len(customers)]),
            factory.card_attached(customers[(i + 1) % len(customers)]))])
        run.load("e2e-warmup-kinds", port=port, mode="closed", duration=600, concurrency=cfg.concurrency,
                 bodies_file=kinds.write(run.dir / "warmup-kinds.jsonl"))
        wait_batch(db, stored_only(db, kinds), fake, checks, 120, 0)
        settle = [(p.customer_id, p.invoice_id) for p in warm_failures[:-rounds]]

        # Peak: the whole batch as fast as the connections allow.
        peak_batch = Batch(factory.mix(cfg.e2e_events, customers, settle))
        profilers = [run.profiler("worker-e2e", worker), run.profiler("web-e2e", web)]
        backends = BackendCpu(run.cfg.database_url, database_name(database_url)).start() \
            if run.database_kind == "postgresql" else None
        cpu_before = (tree_cpu_seconds(worker), tree_cpu_seconds(web))
        try:
            posted = run.load("e2e-peak", port=port, mode="closed", duration=600, concurrency=cfg.concurrency,
                              bodies_file=peak_batch.write(run.dir / "peak.jsonl"))
            peak_batch = stored_only(db, peak_batch)
            peak = wait_batch(db, peak_batch, fake, checks, 600, cfg.email_timeout)
        finally:
            for profiler in profilers:
                run.end_profile(profiler)
        if peak["payment_failed_emails"] == 0:
            result.update(status=NA, reason=_why_no_emails(peak, fake), peak=_brief(peak))
            return result
        worker_cpu = tree_cpu_seconds(worker) - cpu_before[0]
        web_cpu = tree_cpu_seconds(web) - cpu_before[1]
        pg_cpu = backends.stop()["seconds"] if backends is not None else None
        elapsed = peak["done_at"] - posted["first_sent"]
        peak_rate = round(len(peak_batch.ids) / elapsed, 1)
        result["peak"] = {**_brief(peak), "rate": peak_rate, "elapsed_s": round(elapsed, 2),
                          "post_rps": posted["rps"], "refused": posted["requests"] - posted["ok"],
                          "worker_cpu_ms_per_event": round(worker_cpu * 1000 / len(peak_batch.ids), 2),
                          "web_cpu_ms_per_event": round(web_cpu * 1000 / len(peak_batch.ids), 2),
                          "postgres_cpu_ms_per_event": (None if pg_cpu is None
                                                        else round(pg_cpu * 1000 / len(peak_batch.ids), 2))}

        # Half of that rate, open loop: the latency target's condition.
        half_rate = max(1.0, round(peak_rate * 0.5, 1))
        count = max(10, int(half_rate * cfg.duration))
        settle = [(p.customer_id, p.invoice_id) for p in peak_batch.planned  # mailed by now
                  if p.type == "invoice.payment_failed"]
        half_batch = Batch(factory.mix(count, customers, settle))
        run.load("e2e-half", port=port, mode="open", rate=half_rate, duration=cfg.duration + 5,
                 concurrency=cfg.concurrency, bodies_file=half_batch.write(run.dir / "half.jsonl"))
        half_batch = stored_only(db, half_batch)
        half = wait_batch(db, half_batch, fake, checks, 300, cfg.email_timeout)
        result["half_peak"] = {"rate": half_rate, **_brief(half)}
        result["idle_cpu_ms_per_s"] = idle_cpu_ms_per_second(worker, cfg.idle_seconds)
        result["status"] = "ok"
    finally:
        result["rss"] = {"web": tree_peak_rss(web), "worker": tree_peak_rss(worker)}
        run.stop(worker)
        run.stop(web)
        db.dispose()
    return result
