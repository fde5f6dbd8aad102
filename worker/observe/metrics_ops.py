"""Operators' metrics beside the domain's: which build runs where, and why webhooks were refused.

`dunning_build_info` (always 1) carries the release, Python, the Stripe API version and the broker
as labels, the Prometheus convention for "what is deployed" (join it on `instance` to see a
half-rolled-out release). `dunning_webhook_rejections_total{reason}` counts refused deliveries by
cause: a spike of `bad_signature` after a secret rotation is an alert, not a log search.
"""

from __future__ import annotations

import os
import platform
import threading

ENV = "PROMETHEUS_MULTIPROC_DIR"  # where every process of a host writes its metrics (worker/observe/metrics.py)
REASONS = ("too_large", "not_utf8", "bad_signature", "not_an_event", "database_unavailable")
_lock = threading.Lock()
_rejections = None


def webhook_rejected(reason: str) -> None:
    """Count one refused webhook delivery (a no-op where metrics are not prepared)."""
    global _rejections
    if not os.environ.get(ENV):
        return
    with _lock:
        if _rejections is None:
            import prometheus_client as prom
            _rejections = prom.Counter("dunning_webhook_rejections", "Stripe webhook deliveries refused, by "
                                       "reason: " + ", ".join(REASONS) + ".", ["reason"],
                                       registry=prom.CollectorRegistry())
    _rejections.labels(reason=reason).inc()


def release() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("dunning-worker")
    except PackageNotFoundError:
        return "unknown"


class BuildInfoCollector:
    """dunning_build_info{version, python, stripe_api_version, broker} 1."""

    def __init__(self, broker_kind: str):
        self.broker_kind = broker_kind

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        from worker.stripe.gateway import STRIPE_API_VERSION
        info = GaugeMetricFamily("dunning_build_info", "The running release (always 1; the labels say which).",
                                 labels=["version", "python", "stripe_api_version", "broker"])
        info.add_metric([release(), platform.python_version(), STRIPE_API_VERSION, self.broker_kind], 1)
        yield info
