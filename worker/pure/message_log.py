"""Ids named on the rest of the current actor message's log lines (structlog's context variables).

No I/O and nothing else from the project: the domain names the case it works on (`bind_case`),
actors name the case, invoice and customer of the row they read anyway (`bind_ids_of`), and
worker/observe/log_context.py looks them up only for an actor that has no such row.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import structlog

CASE_IDS = ("case_id", "invoice_id", "customer_id")


def bind_in_message(**ids: str) -> None:
    """Name ids on the rest of the current actor message's log lines.

    Only inside an actor (whose context starts with message_id and is cleared after the
    message): elsewhere the binding would outlive the work and mislabel unrelated lines.
    """
    if "message_id" in structlog.contextvars.get_contextvars():
        structlog.contextvars.bind_contextvars(**ids)


def outside_message():
    """Log a line about the process, not the message at hand (a once-per-process warning met while
    processing one event): without the message's ids, which would tie it to that event's case."""
    return _restoring_ids(clear_first=True)


def nested_in_message():
    """Run another row's work inside this message (an email delivered in the thread that wrote it):
    what that work binds is undone after it, so this message's later lines keep their own ids."""
    return _restoring_ids(clear_first=False)


@contextmanager
def _restoring_ids(clear_first: bool) -> Iterator[None]:
    saved = structlog.contextvars.get_contextvars()
    if clear_first:
        structlog.contextvars.clear_contextvars()
    try:
        yield
    finally:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(**saved)


def bind_ids_of(row) -> None:
    """Name the case, invoice and customer that a row (an email, a notice, a card retry) names on the
    rest of the message's log lines, read from the row the actor loads anyway (no lookup for log
    fields); an id it does not name is unbound, as a message may go from one row to the next."""
    if "message_id" not in structlog.contextvars.get_contextvars():
        return
    present = {key: row[key] for key in CASE_IDS if row.get(key)}
    structlog.contextvars.unbind_contextvars(*(key for key in CASE_IDS if key not in present))
    structlog.contextvars.bind_contextvars(**present)


def bind_case(case: dict) -> None:
    """Name a case (and its invoice and customer) on the rest of the message's log lines."""
    bind_in_message(case_id=case["id"], invoice_id=case["invoice_id"], customer_id=case["customer_id"])
