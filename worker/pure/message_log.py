"""Ids named on the rest of the current actor message's log lines (structlog's context variables).

No I/O and nothing else from the project: the domain names the case it works on (`bind_case`),
worker/observe/log_context.py finds ids from what an actor was given.
"""

from __future__ import annotations

import structlog


def bind_in_message(**ids: str) -> None:
    """Name ids on the rest of the current actor message's log lines.

    Only inside an actor (whose context starts with message_id and is cleared after the
    message): elsewhere the binding would outlive the work and mislabel unrelated lines.
    """
    if "message_id" in structlog.contextvars.get_contextvars():
        structlog.contextvars.bind_contextvars(**ids)


def bind_case(case: dict) -> None:
    """Name a case (and its invoice and customer) on the rest of the message's log lines."""
    bind_in_message(case_id=case["id"], invoice_id=case["invoice_id"], customer_id=case["customer_id"])
