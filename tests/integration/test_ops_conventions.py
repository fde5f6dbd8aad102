"""Operators' conventions: metric names follow Prometheus's rules, `dunning_build_info` and the webhook
rejections by reason are exposed, and the alert rules and Grafana dashboard under ops/ are valid and
name only metrics the service exposes. `promtool` (Debian's prometheus package; .ci/run installs
it) checks the rules and the exposition; without it those two checks skip."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import falcon.testing
import pytest

from config.settings import PROJECT_ROOT
from tests.support.dunning import T0, failed
from tests.support.helpers import drain, post_event

OPS = PROJECT_ROOT / "ops"
ALERTS = OPS / "prometheus" / "alerts.yml"
DASHBOARD = OPS / "grafana" / "dunning.json"
# Dramatiq's own message metrics (dramatiq.middleware.prometheus), written by the worker processes.
DRAMATIQ_METRICS = {"dramatiq_messages_total", "dramatiq_message_errors_total", "dramatiq_message_retries_total",
                    "dramatiq_message_rejects_total", "dramatiq_messages_inprogress",
                    "dramatiq_delayed_messages_inprogress", "dramatiq_message_duration_milliseconds"}
PROMQL_WORDS = {"sum", "max", "min", "count", "rate", "increase", "by", "histogram_quantile", "le", "without",
                "avg", "on", "ignoring", "bool", "and", "or", "unless", "offset"}


def promtool() -> str:
    found = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if not found:
        pytest.skip("promtool is not installed (Debian: the prometheus package; .ci/run installs it)")
    return found


@pytest.fixture
def scraped(runtime):
    """/metrics after real traffic: a new event, a duplicate, two refused deliveries, one processed."""
    from worker.web.app import create_app
    client = falcon.testing.TestClient(create_app(runtime))
    event = failed("in_ops_metrics", created=T0, customer="cus_ops_metrics")
    assert post_event(client, event).status_code == 200
    assert post_event(client, event).status_code == 200
    assert post_event(client, event, secret="whsec_not_the_right_secret_at_all").status_code == 400
    assert client.simulate_post("/webhooks/stripe", body=b"\xff\xfe",
                                headers={"Stripe-Signature": "t=1,v1=00"}).status_code == 400
    drain(runtime)
    return client.simulate_get("/metrics").text


def families(text: str) -> dict[str, str]:
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))


def sample(text: str, name: str, **labels) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name} {labels}")


def ours(text: str) -> str:
    """The exposition without Dramatiq's own families: those are the library's names (its
    `dramatiq_message_duration_milliseconds` breaks the base-unit rule), kept as its documentation
    and dashboards know them. Every `dunning_*` name is ours and is held to the rules."""
    return "\n".join(line for line in text.splitlines() if "dramatiq_" not in line) + "\n"


def test_metric_names_follow_the_prometheus_naming_rules(scraped):
    for name, kind in families(ours(scraped)).items():
        assert re.fullmatch(r"[a-z_][a-z0-9_]*", name), name
        if kind == "counter":
            assert name.endswith("_total"), f"counter {name} must end in _total"
        else:
            assert not name.endswith("_total"), f"{kind} {name} must not end in _total (it can go down)"
        assert "_rate" not in name and "percent" not in name, f"{name}: a ratio ends in _ratio (0..1)"
        if "seconds" in name or "bytes" in name or "ratio" in name:
            assert re.search(r"_(seconds|bytes|ratio)(_total)?$", name), f"{name}: the unit is the suffix"


def test_build_info_and_rejections_by_reason_are_exposed(scraped):
    from worker.stripe.gateway import STRIPE_API_VERSION
    assert sample(scraped, "dunning_build_info", stripe_api_version=STRIPE_API_VERSION, broker="stub") == 1
    assert sample(scraped, "dunning_webhook_rejections_total", reason="bad_signature") >= 1
    assert sample(scraped, "dunning_webhook_rejections_total", reason="not_utf8") >= 1
    assert sample(scraped, "dunning_webhook_deliveries_total", event_type="invoice.payment_failed",
                  outcome="duplicate") >= 1


def test_promtool_accepts_the_exposition(scraped, tmp_path):
    done = subprocess.run([promtool(), "check", "metrics"], input=ours(scraped), capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_accepts_the_alert_rules():
    done = subprocess.run([promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def metric_names(expr: str) -> set[str]:
    expr = re.sub(r'"[^"]*"', "", expr)        # label values
    expr = re.sub(r"\{[^}]*\}", "", expr)      # matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)     # ranges
    expr = re.sub(r"by \([^)]*\)", "", expr)   # grouping labels
    return {w for w in re.findall(r"[a-z_][a-z0-9_]*", expr)
            if w not in PROMQL_WORDS and ("_" in w)} - {"histogram_quantile"}


def exposed(scraped_text: str) -> set[str]:
    names = set()
    for name, kind in families(scraped_text).items():
        names.add(name)
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names | DRAMATIQ_METRICS


def test_the_grafana_dashboard_is_well_formed_and_names_only_exposed_metrics(scraped):
    board = json.loads(DASHBOARD.read_text())
    assert board["title"] and board["uid"] and isinstance(board["schemaVersion"], int)
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    known = exposed(scraped)
    for panel in board["panels"]:
        assert panel["type"] in {"stat", "timeseries", "table", "gauge", "bargauge"}
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]) and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["refId"] and target["expr"]
            unknown = metric_names(target["expr"]) - known
            assert not unknown, f"panel {panel['title']!r} names metrics nobody exposes: {unknown}"


def test_the_alert_rules_name_only_exposed_metrics(scraped):
    known = exposed(scraped)
    exprs = re.findall(r"^\s+expr: (.+)$", ALERTS.read_text(), re.M)
    assert len(exprs) >= 5
    for expr in exprs:
        assert not metric_names(expr) - known, expr
