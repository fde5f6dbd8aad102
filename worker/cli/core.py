"""Core commands: run the service, its processes, the schema, stats, events and the scheduler."""

from __future__ import annotations

import os
import sys

import click
from sqlalchemy import select

from worker.cli.base import emit, get_runtime, main


@main.command()
def run() -> None:
    """Run the whole service in the foreground (web, workers, scheduler; embedded Redis if needed)."""
    from config.settings import load_settings
    from worker.cli.launcher import run_all
    try:
        settings = load_settings()
        from handlers.policy import load_policy
        from worker.delivery.emails import compile_all, template_names
        # a bad policy (a misspelt email too) or a template that does not compile stops start-up
        # here, before any process starts
        load_policy(settings.dunning_policy, template_names(settings.email_templates_dir))
        compile_all(settings.email_templates_dir)
    except Exception as exc:
        click.echo(f"configuration error: {exc}", err=True)
        sys.exit(2)
    sys.exit(run_all(settings))


@main.command()
@click.option("--host", default=lambda: os.environ.get("HOST", "0.0.0.0"), show_default="$HOST or 0.0.0.0")
@click.option("--workers", default=lambda: int(os.environ.get("WEB_CONCURRENCY", "2")), type=int)
@click.option("--threads", default=lambda: int(os.environ.get("WEB_THREADS", "8")), type=int)
def web(host: str, workers: int, threads: int) -> None:
    """Serve the webhook receiver, admin API, metrics and dashboard with gunicorn."""
    from worker.web.gunicorn_app import serve
    from config.settings import ConfigError, check_bind
    runtime = get_runtime(needs_secrets=True)  # fail fast on bad configuration, before forking
    try:
        check_bind(runtime.settings, host)
    except ConfigError as exc:
        click.echo(f"configuration error: {exc}", err=True)
        sys.exit(2)
    from worker.runtime import web_app
    serve(host, runtime.settings.port, workers, threads, runtime.settings.web_read_timeout,
          app_factory=web_app)  # the runtime is built in each worker, after fork


def _queue_list(_ctx, _param, value: str | None) -> list[str]:
    from worker.queue.queue_names import QUEUES
    names = [q.strip() for q in (value or "").split(",") if q.strip()]
    unknown = sorted(set(names) - set(QUEUES))
    if unknown:
        raise click.BadParameter(f"unknown queue(s) {', '.join(unknown)}; the queues are {', '.join(QUEUES)}")
    return names


@main.command()
@click.option("--queues", callback=_queue_list, default=None,
              help="comma-separated queues to consume (default: all: events,steps,emails,notices,stripe)")
@click.option("--processes", type=int, default=None, help="default: $WORKER_PROCESSES (2)")
@click.option("--threads", type=int, default=None, help="default: $WORKER_THREADS (4)")
@click.option("--supervise/--no-supervise", default=True,
              help="restart the pool when it dies (default); --no-supervise exits with it, for an orchestrator")
@click.option("--metrics-port", type=int, envvar="METRICS_PORT", default=None,
              help="serve this host's worker metrics on this port ($METRICS_PORT)")
def worker(queues: list[str], processes: int | None, threads: int | None, supervise: bool,
           metrics_port: int | None) -> None:
    """Run the Dramatiq worker processes for the service's queues (restarted if they die)."""
    from worker.queue.supervisor import supervise as run_pool
    runtime = get_runtime(needs_secrets=True)  # its processes build the full runtime: fail here first
    settings = runtime.settings
    from worker.delivery.emails import TemplateNotCompiled, compile_all
    try:
        compile_all(settings.email_templates_dir)  # a template that does not compile fails here, not in the pool
    except TemplateNotCompiled as exc:
        click.echo(f"configuration error: an email template does not compile: {exc}", err=True)
        sys.exit(2)
    # --skip-logging: our own structlog/stdlib set-up (worker.runtime) is the only one, scrubbed.
    command = [os.path.join(os.path.dirname(sys.executable), "dramatiq"), "--skip-logging",
               "--processes", str(processes or settings.worker_processes),
               "--threads", str(threads or settings.worker_threads),
               "--worker-shutdown-timeout", "30000", "worker.runtime:worker_setup"]
    if queues:
        command[1:1] = ["--queues", *queues]
    # Dramatiq's consumers back off while a queue is idle, up to its worker timeout (1 s by default):
    # a message arriving then waits that long, on each of the two hops an event takes to its email.
    env = {**os.environ, "dramatiq_worker_timeout": str(settings.worker_idle_poll_ms)}
    if metrics_port:
        from worker.observe.metrics import current_dir
        from worker.observe.worker_metrics import serve
        from worker.queue.queue_state import broker_kind
        serve(metrics_port, current_dir(), os.environ.get("METRICS_HOST", "0.0.0.0"), broker_kind(runtime.broker))
    sys.exit(run_pool(command, restart=supervise, env=env))


@main.command()
def scheduler() -> None:
    """Run the scheduler loop (due steps, reconciler, outbox retries, card expiry scan)."""
    from worker.scheduling.scheduler import run_forever
    runtime = get_runtime(needs_secrets=True)
    run_forever(runtime, runtime.settings.scheduler_interval)


@main.command()
@click.option("--at", "at", default=None, help="run as of this instant, e.g. 2026-12-01T00:00:00Z")
@click.option("--json", "as_json", is_flag=True)
def tick(at: str | None, as_json: bool) -> None:
    """Run one scheduler pass as of an instant (catch up after an outage; tests move time)."""
    from worker.pure.clock import parse_instant, utcnow
    from worker.scheduling.scheduler import run_pass
    runtime = get_runtime()
    now = parse_instant(at) if at else utcnow()
    done = run_pass(runtime, now)
    emit({"at": now.isoformat() + "Z", **done}, as_json,
         lambda d: click.echo(" ".join(f"{k}={v}" for k, v in d.items())))


@main.group()
def db() -> None:
    """The database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="the revision to reach")
def db_upgrade(revision: str) -> None:
    """Apply every migration not yet applied (worker/migrations; safe to run on every deploy)."""
    from worker.infra.migrate import upgrade
    runtime = get_runtime(broker=False)
    before, after = upgrade(runtime.db, revision)
    click.echo(f"database {runtime.db.engine.url.render_as_string(hide_password=True)}: "
               f"{before or 'unversioned'} -> {after}")


@db.command("init")
@click.pass_context
def db_init(ctx) -> None:
    """Alias of `db upgrade` (the schema is made by the migrations)."""
    ctx.invoke(db_upgrade)


@db.command("current")
def db_current() -> None:
    """The revision the database is at, and the newest one this release knows."""
    from worker.infra.migrate import current_revision, head_revisions
    runtime = get_runtime(broker=False)
    click.echo(f"database {current_revision(runtime.db) or 'unversioned'}; "
               f"head {', '.join(head_revisions())}")


@db.command("revision")
@click.option("-m", "--message", required=True, help="what the revision changes")
def db_revision(message: str) -> None:
    """Write a new, empty revision file after the head (for developers; see README)."""
    from worker.infra.migrate import new_revision
    click.echo(new_revision(message))


@main.command()
@click.option("--json", "as_json", is_flag=True)
def stats(as_json: bool) -> None:
    """Counts of events, cases, emails and platform notices by status."""
    from worker.observe.stats import collect_stats
    runtime = get_runtime(broker=False)
    data = collect_stats(runtime.db)

    def render(d):
        for section in ("events", "cases", "emails", "notices"):
            counts = ", ".join(f"{k}={v}" for k, v in sorted(d[section].items())) or "none"
            click.echo(f"{section:8} {counts}")
        for notice in d["pending_notices"]:
            click.echo(f"  pending notice {notice['id']} {notice['type']} attempts={notice['attempts']}"
                       f" next={notice['next_attempt_at']} error={notice['last_error']}")
    emit(data, as_json, render)


@main.group()
def events() -> None:
    """Stored Stripe events."""


@events.command("list")
@click.option("--status", default=None)
@click.option("--type", "event_type", default=None)
@click.option("--limit", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def events_list(status, event_type, limit, as_json) -> None:
    """The newest stored events."""
    runtime = get_runtime(broker=False)
    t = runtime.db.table("events")
    stmt = select(t.c.id, t.c.type, t.c.status, t.c.attempts, t.c.created, t.c.received_at,
                  t.c.last_error).order_by(t.c.received_at.desc()).limit(limit)
    if status:
        stmt = stmt.where(t.c.status == status)
    if event_type:
        stmt = stmt.where(t.c.type == event_type)
    with runtime.db.reading() as conn:
        rows = [dict(r) for r in conn.execute(stmt).mappings()]

    def render(items):
        for r in items:
            click.echo(f"{r['id']}  {r['type']:40} {r['status']:10} attempts={r['attempts']}"
                       + (f"  error={r['last_error'][:80]}" if r["last_error"] else ""))
    emit(rows, as_json, render)


@events.command("show")
@click.argument("event_id")
@click.option("--json", "as_json", is_flag=True)
def events_show(event_id, as_json) -> None:
    """One stored event, with its payload."""
    import json as _json
    runtime = get_runtime(broker=False)
    t = runtime.db.table("events")
    with runtime.db.reading() as conn:
        row = conn.execute(select(t).where(t.c.id == event_id)).mappings().first()
    if row is None:
        click.echo(f"no event {event_id}", err=True)
        sys.exit(1)
    data = dict(row)
    data["payload"] = _json.loads(data["payload"])
    emit(data, True if as_json else False)


@events.command("replay")
@click.argument("event_id", required=False)
@click.option("--failed", is_flag=True, help="replay every failed event")
@click.option("--json", "as_json", is_flag=True)
def events_replay(event_id, failed, as_json) -> None:
    """Set an event (or every failed one) back to received and enqueue it again."""
    from worker.intake.event_store import requeue_events
    if bool(event_id) == bool(failed):
        raise click.UsageError("give an EVENT_ID or --failed")
    runtime = get_runtime()
    ids = requeue_events(runtime, [event_id] if event_id else None)
    emit({"replayed": ids}, as_json, lambda d: click.echo(f"replayed {len(d['replayed'])} event(s)"))
