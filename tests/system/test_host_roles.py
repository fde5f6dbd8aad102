"""Several hosts: one scheduler leads, per-host worker metrics, queue subsets, no hidden crash
loops, and a bounded database pool per process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest
import requests
from sqlalchemy import text

from config.settings import ConfigError, load_settings
from tests.support.services import base_env
from worker.scheduling.leadership import Leadership
from worker.queue.supervisor import supervise


def test_on_postgresql_one_scheduler_leads_and_another_takes_over_when_it_goes(make_runtime):
    runtime = make_runtime(db="postgres")
    first, second = Leadership(runtime.db), Leadership(runtime.db)
    try:
        assert first.is_leader() is True
        assert second.is_leader() is False
        assert first.is_leader() is True  # it keeps leading pass after pass
        first.release()                    # a clean stop
        assert second.is_leader() is True
        # The leader's session dies (host lost, connection cut): the lock goes with it. Only that
        # session: pg_locks is cluster-wide, and other databases' schedulers hold the same key.
        leader_pid = second._conn.execute(text("SELECT pg_backend_pid()")).scalar()
        with runtime.db.engine.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": leader_pid})
            conn.commit()
        assert second.is_leader() is False  # it notices it lost the lock
        assert first.is_leader() is True
    finally:
        first.release()
        second.release()


def test_on_sqlite_every_scheduler_leads_since_there_is_one_host(runtime):
    assert Leadership(runtime.db).is_leader() and Leadership(runtime.db).is_leader()


def test_a_follower_scheduler_runs_no_pass_until_the_leader_stops(make_runtime, tmp_path):
    """Two `dunning scheduler` processes on one PostgreSQL: only the leader logs passes."""
    runtime = make_runtime(db="postgres")
    holder = Leadership(runtime.db)
    assert holder.is_leader()  # another host's scheduler leads
    env = {**os.environ, **base_env(tmp_path, DATABASE_URL=runtime.settings.database_url,
                                    REDIS_URL="redis://127.0.0.1:1/0", SCHEDULER_INTERVAL="1")}
    from tests.support.processes import DUNNING
    log = tmp_path / "scheduler.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([DUNNING, "scheduler"], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        time.sleep(4)
        assert "scheduler.leading" not in log.read_text()
        assert holder._conn is not None and holder.is_leader(), "the holder's session ended under the test"
        holder.release()
        deadline = time.monotonic() + 15
        while "scheduler.leading" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(20)
        holder.release()


def test_database_pool_size_and_max_overflow_bound_each_process(make_runtime, tmp_path):
    runtime = make_runtime(db="postgres", DATABASE_POOL_SIZE="3", DATABASE_MAX_OVERFLOW="1")
    pool = runtime.db.engine.pool
    assert (pool.size(), pool._max_overflow) == (3, 1)
    for bad in ("0", "many"):
        with pytest.raises(ConfigError, match="DATABASE_POOL_SIZE"):
            load_settings(base_env(tmp_path, DATABASE_POOL_SIZE=bad))


def test_without_supervision_a_dying_pool_ends_the_command_with_its_exit_code(tmp_path):
    runs = tmp_path / "runs"
    child = tmp_path / "child.py"
    child.write_text(textwrap.dedent(f"""
        import pathlib, sys
        runs = pathlib.Path({str(runs)!r})
        runs.write_text(runs.read_text() + "x" if runs.exists() else "x")
        sys.exit(3)
    """))
    assert supervise([sys.executable, str(child)], restart=False) == 3
    assert runs.read_text() == "x"  # not restarted: the orchestrator sees the crash


def test_worker_refuses_a_queue_the_service_does_not_have(tmp_path):
    from tests.support.processes import DUNNING
    env = {**os.environ, **base_env(tmp_path, REDIS_URL="redis://127.0.0.1:1/0")}
    done = subprocess.run([DUNNING, "worker", "--queues", "events,nope"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2
    assert "unknown queue(s) nope" in done.stderr and "events, steps, emails, notices, stripe" in done.stderr


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_worker_host_consumes_only_its_queues_and_serves_its_own_metrics(tmp_path):
    """`dunning worker --queues steps --metrics-port P` with no web process on the host."""
    from prometheus_client.parser import text_string_to_metric_families

    def counted(body: str) -> float:
        """dramatiq_messages_total for run_case_steps on the steps queue (0 when absent)."""
        return sum(sample.value for family in text_string_to_metric_families(body) for sample in family.samples
                   if sample.name == "dramatiq_messages_total" and sample.labels.get("actor_name") == "run_case_steps"
                   and sample.labels.get("queue_name") == "steps")
    from tests.support.processes import build_service, free_port
    svc = build_service(tmp_path, db="sqlite", broker="redis")
    port = free_port()
    try:
        worker = svc.start("worker", [svc.env()["PATH"].split(os.pathsep)[0] + "/dunning", "worker",
                                      "--queues", "steps", "--processes", "1", "--threads", "2",
                                      "--no-supervise", "--metrics-port", str(port)],
                           METRICS_HOST="127.0.0.1")
        from worker.queue.broker import make_redis_broker
        from worker.runtime import setup
        runtime = setup(load_settings(svc.env()), make_redis_broker(svc.redis_url, svc.namespace))
        runtime.actors.process_event.send("evt_not_for_this_host")
        runtime.actors.run_case_steps.send("dc_unknown", "2026-12-01T00:00:00Z")

        def scraped():
            try:
                body = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
            except requests.RequestException:
                return None
            # the message is counted once it has run (an in-progress gauge may name the actor before)
            return body if counted(body) >= 1 else None
        body = svc.wait_for(scraped, timeout=60, message="the steps message counted", watch=[worker])
        assert counted(body) >= 1
        assert "process_event" not in body
        assert runtime.broker.client.llen(f"{svc.namespace}:events") == 1  # left for an events host
        svc.kill(worker)
    finally:
        svc.close()


# -- enqueue leases ------------------------------------------------------------------------------
@pytest.mark.parametrize("db", ["sqlite", "postgres"])
def test_a_due_case_already_queued_is_not_queued_again_before_its_lease_lapses(make_runtime, db):
    from datetime import timedelta

    from worker.scheduling.due_steps import ENQUEUE_LEASE, enqueue_due_steps
    from tests.support import dunning as fx
    runtime = make_runtime(db=db)
    fx.deliver(runtime, fx.failed("in_lease_1", created=fx.T0, customer="cus_lease_1"))
    day3 = fx.at(fx.T0 + 3 * fx.DAY)
    assert enqueue_due_steps(runtime, day3) == 1
    assert enqueue_due_steps(runtime, day3) == 0          # a second pass, or a second host
    assert runtime.broker.queues["steps"].qsize() == 1
    later = day3 + ENQUEUE_LEASE + timedelta(seconds=1)    # the message was lost: queued again
    assert enqueue_due_steps(runtime, later) == 1
    fx.drain_queues(runtime, ("steps",))                    # it ran: the lease is gone with it
    assert fx.templates(runtime) == ["payment-failed", "reminder"]
    assert fx.rows(runtime, "cases")[0]["steps_enqueued_at"] is None
    assert enqueue_due_steps(runtime, fx.at(fx.T0 + 8 * fx.DAY)) == 1  # the next step, at once


def test_a_pending_email_already_queued_is_not_swept_again_before_its_lease_lapses(runtime):
    from datetime import timedelta

    from tests.support import dunning as fx
    from worker.delivery.email_delivery import ENQUEUE_LEASE, sweep_emails
    from worker.pure.clock import utcnow
    fx.deliver(runtime, fx.failed("in_lease_2", created=fx.T0, customer="cus_lease_2"))
    runtime.broker.flush_all()                  # the message sent after commit was lost
    now = utcnow()
    assert sweep_emails(runtime, now) == 0      # inside the lease of the message sent at commit
    assert sweep_emails(runtime, now + ENQUEUE_LEASE + timedelta(seconds=1)) == 1
    assert sweep_emails(runtime, now + ENQUEUE_LEASE + timedelta(seconds=2)) == 0
    assert runtime.broker.queues["emails"].qsize() == 1


@pytest.mark.timeout(90)
def test_the_worker_pool_polls_an_idle_queue_as_often_as_worker_idle_poll_ms_says(tmp_path):
    """Dramatiq reads its idle backoff cap from `dramatiq_worker_timeout` at start: `dunning worker`
    hands WORKER_IDLE_POLL_MS to the pool it starts (README "Worker size")."""
    from tests.support.helpers import wait_until
    from tests.support.processes import DUNNING, children_of
    env = {**os.environ, **base_env(tmp_path, REDIS_URL="redis://127.0.0.1:6379/0", WORKER_IDLE_POLL_MS="321")}
    env.pop("dramatiq_worker_timeout", None)
    worker = subprocess.Popen([DUNNING, "worker", "--processes", "1", "--threads", "1"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        pool = wait_until(lambda: children_of(worker.pid), timeout=60)[0]  # the Dramatiq pool it started
        with open(f"/proc/{pool}/environ", "rb") as f:
            variables = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
        assert variables[b"dramatiq_worker_timeout"] == b"321"
    finally:
        worker.terminate()
        worker.wait(20)
