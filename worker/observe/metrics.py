"""Metrics: one Prometheus view for the web process and every worker process.

prometheus_client's multiprocess mode keeps each process's counters in mmapped files under one
directory (PROMETHEUS_MULTIPROC_DIR, here `<var_dir>/prometheus`); GET /metrics in the web
process reads them all, so the webhook counters (web) and Dramatiq's message metrics (workers)
come out of one endpoint. The directory must be known before prometheus_client creates a value,
which is why nothing here imports prometheus_client at module level: `prepare(settings)` sets
the environment first (runtime.setup calls it through `install_broker_middleware`).

The domain's numbers (cases by state, emails by template, recovery rate...) are not counted in
process memory: database triggers keep them in `metric_counts` in the very statement that writes
the counted row (worker/observe/metric_counts.py), so they are right after a restart, a crash or a
replay, and no code path can forget to count. A scrape reads those few rows (label sets x
shards) and two index steps, never the events or cases tables: it costs the same at 10 rows and
at 10M. DomainSnapshot still keeps the last result for up to METRICS_REFRESH_SECONDS (default
30), so any number of scrapers cause at most one read per interval per web process.
Amounts recovered are business figures: published only with METRICS_AMOUNTS=1.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from datetime import timedelta
from pathlib import Path

import structlog
from sqlalchemy import select

from worker.pure.clock import utcnow

from worker.observe.metrics_ops import ENV  # noqa: E402  (the multiprocess folder variable)
RECOVERY_WINDOW = timedelta(days=30)
UNDELIVERED = ("pending", "sending")
WEBHOOK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
log = structlog.get_logger("worker.observe.metrics")

_lock = threading.Lock()
_webhook_metrics = None
_dramatiq_metrics = None


# -- the multiprocess directory -------------------------------------------------------------
def multiproc_dir(settings) -> Path:
    """Where every process of this service writes its metric files."""
    return Path(settings.var_dir) / "prometheus"


def reset_multiproc_dir(settings) -> Path:
    """Empty the directory at service start (files of processes from a previous run are stale)."""
    path = multiproc_dir(settings)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    return path


def prepare(settings) -> Path:
    """Point this process at the metrics directory before prometheus_client creates any value.

    A directory already in the environment wins (the launcher sets it for every child, and in
    a process that built several runtimes the first one fixed it for the process's life).
    """
    path = Path(os.environ.get(ENV) or multiproc_dir(settings))
    path.mkdir(parents=True, exist_ok=True)
    os.environ[ENV] = str(path)
    # Dramatiq's middleware module reads this at import to decide its own directory.
    os.environ.setdefault("dramatiq_prom_db", str(path))
    import prometheus_client.values as values
    if not getattr(values.ValueClass, "_multiprocess", False):
        # prometheus_client was imported before the directory was known: switch to mmapped values.
        values.ValueClass = values.get_value_class()
    return path


def current_dir() -> Path | None:
    value = os.environ.get(ENV)
    return Path(value) if value else None


# -- Dramatiq's own message metrics -----------------------------------------------------------
def _dramatiq_metric_objects(broker):
    """Dramatiq's metric objects, made once per process (several brokers share them in tests)."""
    global _dramatiq_metrics
    with _lock:
        if _dramatiq_metrics is None:
            from dramatiq.middleware.prometheus import Prometheus
            template = Prometheus()
            saved = {k: os.environ.get(k) for k in (ENV, "prometheus_multiproc_dir")}
            Prometheus.after_process_boot(template, broker)
            for key, value in saved.items():  # it points the env at its own DB_PATH: put ours back
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            _dramatiq_metrics = {name: getattr(template, name) for name in (
                "total_messages", "total_errored_messages", "total_retried_messages",
                "total_rejected_messages", "inprogress_messages", "inprogress_delayed_messages",
                "message_durations")}
        return _dramatiq_metrics


def _middleware_class():
    from dramatiq.middleware.prometheus import Prometheus

    class DramatiqMetrics(Prometheus):
        """Dramatiq's Prometheus middleware, without its exposition server (GET /metrics serves).

        Its metrics exist from the moment it is added, not only after a `dramatiq` CLI process
        boot: the web process enqueues (after_enqueue counts retries) and tests run a Worker
        directly.
        """

        def __init__(self, broker):
            super().__init__()
            for name, metric in _dramatiq_metric_objects(broker).items():
                setattr(self, name, metric)

        @property
        def forks(self):
            return []

        def after_process_boot(self, broker):
            return None

        def after_worker_shutdown(self, broker, worker):
            from prometheus_client import multiprocess
            path = current_dir()
            if path is not None:
                multiprocess.mark_process_dead(os.getpid(), str(path))

    return DramatiqMetrics


def install_broker_middleware(broker, settings=None) -> None:
    """Add Dramatiq's message metrics to the broker (once), writing to this service's directory.

    `settings` decides the directory (runtime.setup passes them); without them the directory
    must already be in the environment (a child of the launcher), else metrics stay off.
    """
    if settings is not None:
        prepare(settings)
    elif not os.environ.get(ENV):
        log.warning("metrics.disabled", reason=f"{ENV} is not set")
        return
    cls = _middleware_class()
    if any(isinstance(m, cls.__mro__[1]) for m in broker.middleware):
        return
    broker.add_middleware(cls(broker))


# -- the web process's own metrics ----------------------------------------------------------------
def _webhook_objects():
    global _webhook_metrics
    with _lock:
        if _webhook_metrics is None:
            import prometheus_client as prom
            registry = prom.CollectorRegistry()  # values live in the multiprocess files
            _webhook_metrics = (
                prom.Counter("dunning_webhook_deliveries", "Stripe webhook deliveries accepted, by "
                             "event type and whether the event was new or a duplicate.",
                             ["event_type", "outcome"], registry=registry),
                prom.Histogram("dunning_webhook_duration_seconds", "Time to verify, store and enqueue "
                               "one Stripe webhook delivery.", buckets=WEBHOOK_BUCKETS, registry=registry),
            )
        return _webhook_metrics


_delivery_children: dict = {}  # (counter, event type, new) -> the counter's bound child


def webhook_received(event_type: str, is_new: bool, seconds: float) -> None:
    """Count a webhook delivery and observe its latency.

    Per delivery this is a dict lookup and two increments: the counter's child for each (type,
    outcome) is bound once (labels() validates and locks on every call), and the metric objects
    are made once (their lock is taken only until then)."""
    if not os.environ.get(ENV):
        return  # metrics not prepared in this process (a bare create_app in a unit test)
    deliveries, duration = _webhook_metrics or _webhook_objects()
    child = _delivery_children.get((deliveries, event_type, is_new))
    if child is None:
        child = _delivery_children[(deliveries, event_type, is_new)] = deliveries.labels(
            event_type=event_type, outcome="new" if is_new else "duplicate")
    child.inc()
    duration.observe(seconds)


# -- the domain, read from counts kept as the work happens -------------------------------------------
class DomainCollector:
    """Domain metrics from `metric_counts` (worker/observe/metric_counts.py): rows the triggers move in
    the transaction that does the work, so a read costs the same at 10 rows and at 10M, and the
    figures survive restarts."""

    def __init__(self, db, amounts: bool = True):
        self.db = db
        self.amounts = amounts

    def describe(self):
        return []  # computed at scrape time: nothing to check at registration

    def collect(self):
        """The domain families, plus dunning_database_up (0 when the database cannot be read: the
        scrape still serves every process's own metrics instead of failing)."""
        from prometheus_client.core import GaugeMetricFamily
        try:
            families = list(self._families())
            up = 1
        except Exception as exc:  # noqa: BLE001 - an outage must not break the scrape
            log.warning("metrics.database_unavailable", error=str(exc).splitlines()[0][:200] if str(exc) else "")
            families, up = [], 0
        yield from families
        yield GaugeMetricFamily("dunning_database_up", "1 when the domain metrics could be read from the "
                                "database at this scrape, else 0.", value=up)

    def _families(self):
        from worker.observe import metric_counts
        from worker.intake.reconciler import exhausted_count
        now = utcnow()
        outboxes = (("emails", self.db.table("emails")), ("notices", self.db.table("platform_notices")))
        with self.db.reading(snapshot=True) as conn:  # (tables reflected first: SQLite's BEGIN takes the lock)
            counts = metric_counts.read(conn, now - RECOVERY_WINDOW)
            exhausted = exhausted_count(conn, self.db, now)
            oldest = {name: _oldest_pending(conn, table) for name, table in outboxes}
        yield from _event_families(counts, exhausted)
        yield from _case_families(counts, self.amounts)
        yield from _outbox_families(counts, oldest, now)


def _summed(rows, *fields, where=lambda labels: True) -> list[tuple[tuple, int]]:
    """Counts re-grouped by some of their labels, in label order."""
    out: dict[tuple, int] = {}
    for labels, n, _total in rows:
        if where(labels):
            key = tuple(labels[i] for i in fields)
            out[key] = out.get(key, 0) + n
    return sorted(out.items())


def _event_families(counts, exhausted: int):
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    events = counts.rows("events")  # labels: type, source, status, processed ('1'/'0')
    received = CounterMetricFamily("dunning_events_received", "Stripe events stored, by type "
                                   "and source (webhook or backfill).", labels=["type", "source"])
    for (etype, source), n in _summed(events, 0, 1):
        received.add_metric([etype, source], n)
    yield received
    processed = CounterMetricFamily("dunning_events_processed", "Stripe events whose handler "
                                    "ran to the end (processed or ignored), by type.", labels=["type"])
    for (etype,), n in _summed(events, 0, where=lambda labels: labels[3] == "1"):
        processed.add_metric([etype], n)
    yield processed
    by_status = GaugeMetricFamily("dunning_events", "Stored Stripe events by type and current "
                                  "status (failed = handler error kept).", labels=["type", "status"])
    failed = GaugeMetricFamily("dunning_events_failed", "Stripe events currently failed, by type.",
                               labels=["type"])
    for (etype, status), n in _summed(events, 0, 2):
        by_status.add_metric([etype, status], n)
        if status == "failed":
            failed.add_metric([etype], n)
    yield by_status
    yield failed
    yield GaugeMetricFamily("dunning_events_redrive_exhausted", "Events failed transiently for longer "
                            "than the reconciler re-drives them (3 days): replay with `dunning events "
                            "replay --failed`.", value=exhausted)


def _case_families(counts, amounts: bool):
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    from handlers.dunning import OPEN_STATES
    cases = counts.rows("cases")  # labels: state, owner unreachable ('1'/'0')
    states = GaugeMetricFamily("dunning_cases", "Dunning cases by state.", labels=["state"])
    for (state,), n in _summed(cases, 0):
        states.add_metric([state], n)
    yield states
    unreachable = sum(n for (state, flag), n, _ in cases if flag == "1" and state in OPEN_STATES)
    yield GaugeMetricFamily("dunning_cases_owner_unreachable", "Open cases whose owner has no "
                            "deliverable address (disruption held unless released).", value=unreachable)

    moved = CounterMetricFamily("dunning_case_transitions", "Case state transitions, by from "
                                "state, to state and trigger.", labels=["from_state", "to_state", "trigger"])
    for labels, n, _ in counts.rows("case_transitions"):
        moved.add_metric(list(labels), n)
    yield moved

    amount = CounterMetricFamily("dunning_recovered_amount", "Amount recovered, in the currency's "
                                 "minor units (cents, yen), by currency.", labels=["currency"])
    count = CounterMetricFamily("dunning_recovered_cases", "Cases recovered, by currency.",
                                labels=["currency"])
    for (currency,), n, total in counts.rows("cases_recovered"):
        amount.add_metric([currency], total)
        count.add_metric([currency], n)
    if amounts:
        yield amount
    yield count

    # Cases per opening hour: the window starts at the hour holding "30 days ago" (at most an
    # hour more than 30 days).
    from worker.observe.metric_counts import OPENED_HOUR
    hours = counts.rows(OPENED_HOUR)  # labels: hour, recovered ('1'/'0')
    opened_n = sum(n for _labels, n, _ in hours)
    recovered_n = sum(n for (_hour, recovered), n, _ in hours if recovered == "1")
    yield GaugeMetricFamily("dunning_cases_opened_30d", "Cases opened in the last 30 days.", value=opened_n)
    yield GaugeMetricFamily("dunning_cases_recovered_30d", "Cases opened in the last 30 days that "
                            "are recovered.", value=recovered_n)
    rate = GaugeMetricFamily("dunning_recovery_30d_ratio", "Recovered / opened, over cases opened in "
                             "the last 30 days (absent when none opened).", labels=[])
    if opened_n:
        rate.add_metric([], recovered_n / opened_n)
    yield rate


def _outbox_families(counts, oldest: dict, now):
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    sent = CounterMetricFamily("dunning_emails_sent", "Emails delivered, by template.", labels=["template"])
    email_states = GaugeMetricFamily("dunning_emails", "Outbox emails by template and status "
                                     "(pending, sending, sent, failed).", labels=["template", "status"])
    email_failed = GaugeMetricFamily("dunning_emails_failed", "Emails that gave up, by template.",
                                     labels=["template"])
    _by_status(counts.rows("emails"), email_states, sent, email_failed)
    yield from (sent, email_failed, email_states)

    notice_states = GaugeMetricFamily("dunning_platform_notices", "Platform notices by type and "
                                      "status (pending, sent, failed).", labels=["type", "status"])
    delivered = CounterMetricFamily("dunning_platform_notices_delivered", "Platform notices "
                                    "delivered, by type.", labels=["type"])
    notice_failed = GaugeMetricFamily("dunning_platform_notices_failed", "Platform notices that gave "
                                      "up after the retry window, by type (redeliver them with "
                                      "`dunning notices redeliver --failed`).", labels=["type"])
    _by_status(counts.rows("platform_notices"), notice_states, delivered, notice_failed)
    yield from (notice_states, delivered, notice_failed)

    links = counts.rows("payment_links")  # labels: status, currency
    created = CounterMetricFamily("dunning_payment_links_created", "Payment links created at "
                                  "Stripe, by currency.", labels=["currency"])
    link_states = GaugeMetricFamily("dunning_payment_links", "Payment link requests by status.",
                                    labels=["status"])
    for (currency,), n in _summed(links, 1, where=lambda labels: labels[0] == "created"):
        created.add_metric([currency], n)
    for (status,), n in _summed(links, 0):
        link_states.add_metric([status], n)
    yield created
    yield link_states

    retry_outcomes = CounterMetricFamily("dunning_card_retries", "Immediate invoice retries after "
                                         "a card update, by outcome (pending, succeeded, declined, "
                                         "failed).", labels=["outcome"])
    for (status,), n, _ in counts.rows("card_retries"):
        retry_outcomes.add_metric([status], n)
    yield retry_outcomes

    age = GaugeMetricFamily("dunning_outbox_oldest_pending_age_seconds", "Age of the oldest "
                            "undelivered outbox row (0 when none), by outbox.", labels=["outbox"])
    for name, first in oldest.items():
        age.add_metric([name], max(0.0, (now - first).total_seconds()) if first else 0.0)
    yield age


def _by_status(rows, states, delivered, failed) -> None:
    """An outbox's counts by (template or type, status) feed its three families at once."""
    for (kind, status), n, _total in rows:
        states.add_metric([kind, status], n)
        if status == "sent":
            delivered.add_metric([kind], n)
        elif status == "failed":
            failed.add_metric([kind], n)


def _oldest_pending(conn, table):
    """created_at of the oldest pending or sending row: one step down (status, created_at) per status."""
    firsts = [conn.execute(select(table.c.created_at).where(table.c.status == status)
                           .order_by(table.c.created_at).limit(1)).scalar() for status in UNDELIVERED]
    firsts = [first for first in firsts if first is not None]
    return min(firsts) if firsts else None


class DomainSnapshot:
    """The domain families of the last refresh; a refresh runs in the background, at most once
    per `refresh_seconds` however many scrapes arrive (0: compute at every scrape, for tests).
    A scrape before the first refresh has finished waits for it (FIRST_WAIT_SECONDS at most): the
    read is a few rows, so the first scrape gets the figures instead of none."""

    FIRST_WAIT_SECONDS = 5.0

    def __init__(self, db, refresh_seconds: float = 30.0, amounts: bool = False):
        self.collector = DomainCollector(db, amounts=amounts)
        self.refresh_seconds = refresh_seconds
        self._lock = threading.Lock()
        self._families: list = []
        self._started_at: float | None = None  # monotonic start of the last refresh
        self._taken_at: float | None = None  # monotonic end of the last finished refresh
        self._running = False
        self._took: float | None = None  # seconds the last refresh took
        self._first = threading.Event()  # set when the first refresh has finished (or failed)

    def describe(self):
        return []

    def refresh_due(self, now: float) -> bool:
        return self._started_at is None or now - self._started_at >= self.refresh_seconds

    def start(self) -> None:
        """Begin a refresh now unless one is running or the last began under refresh_seconds ago."""
        now = time.monotonic()
        with self._lock:
            if self._running or not self.refresh_due(now):
                return
            self._running, self._started_at = True, now
        threading.Thread(target=self._refresh, name="metrics-snapshot", daemon=True).start()

    def _refresh(self) -> None:
        began = time.monotonic()
        try:
            families = list(self.collector.collect())
            with self._lock:
                self._families, self._taken_at, self._took = families, time.monotonic(), time.monotonic() - began
        except Exception:  # noqa: BLE001 - e.g. a closed log stream: keep the last figures, never kill the thread
            return
        finally:
            with self._lock:
                self._running = False
            self._first.set()

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily
        if self.refresh_seconds <= 0:
            yield from self.collector.collect()
            return
        self.start()
        self._first.wait(self.FIRST_WAIT_SECONDS)
        with self._lock:
            families, taken, took = list(self._families), self._taken_at, self._took
        yield from families
        yield GaugeMetricFamily("dunning_metrics_snapshot_refresh_seconds", "How long the last refresh of the "
                                "domain figures took (its queries run at most once per METRICS_REFRESH_SECONDS).",
                                value=-1.0 if took is None else took)
        yield GaugeMetricFamily("dunning_metrics_snapshot_age_seconds", "Age of the domain figures "
                                "(refreshed in the background every METRICS_REFRESH_SECONDS; -1 before "
                                "the first refresh).", value=-1.0 if taken is None else time.monotonic() - taken)


class QueueCollector:
    """Messages the broker holds per queue (ready, delayed, dead-lettered), Redis or RabbitMQ."""

    def __init__(self, broker):
        self.broker = broker

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        from worker.queue.queue_state import message_counts
        family = GaugeMetricFamily("dunning_queue_messages", "Messages held by the broker per queue: ready "
                                   "(Redis: includes those a worker holds; RabbitMQ: waiting only), delayed, "
                                   "dead (dead-lettered).", labels=["queue", "kind"])
        try:
            for queue, counts in message_counts(self.broker).items():
                for kind, count in zip(("ready", "delayed", "dead"), counts):
                    family.add_metric([queue, kind], count)
        except Exception as exc:  # noqa: BLE001 - a broker outage must not break the scrape
            log.warning("metrics.queue_depth_unavailable", error=str(exc)[:200])
            family = GaugeMetricFamily(family.name, family.documentation, labels=["queue", "kind"])
        yield family


# -- exposition ---------------------------------------------------------------------------------------
def render(runtime, snapshot: DomainSnapshot | None = None) -> tuple[bytes, str]:
    """The /metrics body (every process's files plus the domain) and its content type.

    Without a snapshot the domain queries run now (the CLI and tests); the web process passes
    its DomainSnapshot."""
    import prometheus_client as prom
    from prometheus_client import multiprocess
    registry = prom.CollectorRegistry(auto_describe=False)
    path = current_dir()
    if path is not None and path.is_dir():
        multiprocess.MultiProcessCollector(registry, path=str(path))
    registry.register(snapshot if snapshot is not None else DomainCollector(runtime.db))
    registry.register(QueueCollector(runtime.broker))
    from worker.observe.metrics_ops import BuildInfoCollector
    from worker.queue.queue_state import broker_kind
    registry.register(BuildInfoCollector(broker_kind(runtime.broker)))
    return prom.generate_latest(registry), prom.CONTENT_TYPE_LATEST
