"""The owner's reachability as the outside reports it: a provider's refusal, an operator's release.

Each runs the domain's rule (handlers/reachability.py) in one unit of work.
"""

from __future__ import annotations

import structlog

from handlers import reachability
from worker.infra.unit_of_work import unit_of_work

log = structlog.get_logger("handlers.reachability")


def mark_rejected_email(runtime, email_id: str, error: str) -> None:
    """A dunning email of a case was refused permanently by the provider: its owner is unreachable."""
    with unit_of_work(runtime, log=log) as ctx:
        reachability.mark_rejected_email(ctx, email_id, error)


def release_case(runtime, case_key: str, *, released_by: str, reason: str) -> dict:
    """Lift the hold of a case whose owner is unreachable (`dunning cases release`, the console)."""
    with unit_of_work(runtime, log=log) as ctx:
        return reachability.release_case(ctx, case_key, released_by=released_by, reason=reason)
