"""The multi-host proof: 2 web processes, 3 worker "hosts" and 2 schedulers on one PostgreSQL and one
broker (Redis, then RabbitMQ). Each host is its own process tree with its own var/ and metrics
folder (and METRICS_PORT). 2,000 events, a quarter of them delivered twice, half through each web
process; one worker host and the leading scheduler are SIGKILLed mid-run. Every event is processed,
every step email (day 0 and the day-3 reminder) is accepted by SendGrid exactly once, the other
scheduler takes the lead, and each host's metrics are scraped on their own.
"""

from __future__ import annotations

import random
import re
import time
import types
from datetime import timedelta

import pytest
import requests

from tests.support.fault_load import (BROKERS, Poster, assert_no_loss_no_duplicate, figures, invoice_batch, iso,
                                      processed_count, service_env, wait_effects_delivered)
from tests.support.processes import DUNNING, build_service, free_port

pytestmark = [pytest.mark.slow]


def host_env(svc, name: str) -> dict[str, str]:
    """A host's own folders: var/ (so its metrics files) and the outbox directories."""
    root = svc.workdir / name
    metrics = root / "var" / "prometheus"
    metrics.mkdir(parents=True, exist_ok=True)
    return {"DUNNING_VAR_DIR": str(root / "var"), "PROMETHEUS_MULTIPROC_DIR": str(metrics),
            "dramatiq_prom_db": str(metrics)}


def scrape(port: int) -> str | None:
    try:
        return requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except requests.RequestException:
        return None


def processed_by(text: str) -> float:
    return sum(float(v) for v in re.findall(r'^dramatiq_messages_total\{[^}]*\} (\S+)$', text, re.M))


@pytest.mark.timeout(600)
@pytest.mark.parametrize("broker", BROKERS)
def test_two_webs_three_worker_hosts_two_schedulers_lose_and_duplicate_nothing_through_kills(
        tmp_path, fakes, broker):  # noqa: F811
    sendgrid, platform = fakes
    svc = build_service(tmp_path, db="postgres", broker=broker, **service_env(sendgrid, platform))
    try:
        events = invoice_batch("m", 500, int(time.time()) - 3600)
        assert len(events) == 2000
        rng = random.Random(15)
        deliveries = events + rng.sample(events, 500)   # Stripe delivers some twice
        rng.shuffle(deliveries)

        web_port = free_port()
        webs = [svc.start_web(workers=1, threads=8, **host_env(svc, "web1")),
                svc.start_web(workers=1, threads=8, PORT=str(web_port), **host_env(svc, "web2"))]
        metrics_ports = [free_port() for _ in range(3)]
        workers = [svc.start(f"worker-host{n}", [DUNNING, "worker", "--processes", "1", "--threads", "4",
                                                 "--metrics-port", str(port)],
                             METRICS_HOST="127.0.0.1", **host_env(svc, f"host{n}"))
                   for n, port in enumerate(metrics_ports)]
        schedulers = [svc.start_scheduler(**host_env(svc, f"sched{n}")) for n in range(2)]
        svc.wait_for(lambda: sum("scheduler.leading" in s.log() for s in schedulers) == 1, timeout=60,
                     message="one scheduler leading")
        leader = next(s for s in schedulers if "scheduler.leading" in s.log())
        follower = next(s for s in schedulers if s is not leader)

        second_web = types.SimpleNamespace(base_url=f"http://127.0.0.1:{web_port}")
        posters = [Poster(svc, deliveries[0::2]).start(), Poster(second_web, deliveries[1::2]).start()]

        svc.wait_for(lambda: processed_count(svc) >= 0.4 * len(events), timeout=240,
                     message="40% processed", watch=[*webs, *schedulers])
        killed_host = workers[0]
        svc.kill(killed_host)
        svc.kill(leader)
        statuses = [p.join() for p in posters]
        svc.wait_for(lambda: "scheduler.leading" in follower.log(), timeout=60, message="the follower leads",
                     watch=[follower])

        live = [*webs, *workers[1:], follower]
        svc.wait_all_events_done(len(events), timeout=200, watch=live)
        # Day 3's reminder: a step the scheduler enqueues (the follower, now leading), then SendGrid.
        svc.tick(iso(timedelta(days=3, hours=1)))
        svc.wait_for(lambda: svc.scalar("SELECT COUNT(*) FROM emails WHERE template = 'reminder'") >= 500,
                     timeout=200, message="500 reminders", watch=live)
        wait_effects_delivered(svc, sendgrid, None, watch=live, timeout=200)

        expected = {"payment-failed": 500, "reminder": 500}
        http = {}
        for s in statuses:
            for code, n in s.items():
                http[code] = http.get(code, 0) + n
        out = figures(svc, events, sendgrid, None, expected, {}, crash_window=True, kills=2,
                      http_statuses=http, broker=broker)
        assert out["resent_in_kill_window"] <= out["orphaned_sends_recovered"]
        assert_no_loss_no_duplicate(out, expected)

        # Every host's metrics on their own: the two live worker hosts each processed messages.
        per_host = [scrape(port) for port in metrics_ports]
        assert per_host[0] is None, "the killed host's metrics server went with it"
        counts = [processed_by(text) for text in per_host[1:]]
        assert all(c > 0 for c in counts), counts
        for port in (svc.port, web_port):
            assert 'dunning_build_info{' in (scrape(port) or "")
        print(f"\nmulti-host ({broker}): messages per live worker host {counts}; http {http}")
    finally:
        svc.close()
