"""Optional error tracking: SENTRY_DSN turns on sentry-sdk, with its Dramatiq and Falcon integrations.

Unset, nothing is imported or sent. Set, every event and breadcrumb goes through the same scrubber
as the logs before it leaves the process (secrets as '***', email addresses masked), and no
default PII (request bodies, cookies, user IPs) is attached: a webhook body names the customer.
Initialised in runtime.setup before the broker is made, so the Dramatiq integration sees it.
"""

from __future__ import annotations

from typing import Any

_initialised_dsn: str | None = None


def scrub_event(event: dict, _hint: Any = None) -> dict:
    from worker.observe.logs import _scrub_value
    return _scrub_value(event)


def init_error_tracking(dsn: str | None, *, release: str, environment: str | None = None) -> bool:
    """Start sentry-sdk once per process when a DSN is given; True when it is on."""
    global _initialised_dsn
    if not dsn:
        return False
    if _initialised_dsn == dsn:
        return True
    import sentry_sdk
    from sentry_sdk.integrations.dramatiq import DramatiqIntegration
    from sentry_sdk.integrations.falcon import FalconIntegration
    sentry_sdk.init(
        dsn=dsn,
        release=f"dunning-worker@{release}",
        environment=environment,
        integrations=[DramatiqIntegration(), FalconIntegration()],
        max_request_body_size="never",
        before_send=scrub_event,
        before_send_transaction=scrub_event,
        before_breadcrumb=scrub_event,
        traces_sample_rate=0.0,
    )
    _initialised_dsn = dsn
    return True
