"""Metrics: one registry for web and workers (Prometheus multiprocess mode). Filled in by the operators' issue."""

from __future__ import annotations


def install_broker_middleware(broker) -> None:
    """Add Dramatiq's own message metrics to the broker (no-op until metrics are enabled)."""
    return None


def webhook_received(event_type: str, is_new: bool, seconds: float) -> None:
    """Count a webhook delivery and observe its latency."""
    return None
