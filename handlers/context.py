"""What a handler receives: the open transaction, the stored event, the clock, and the ports it may use.

Handlers do no network I/O. Effects are rows (outbox emails, platform notices, Stripe jobs)
written in the same transaction through `effects`; work registered with `after_commit` runs only
once the transaction has committed (typically: enqueue the id of a row just written). The
context is built by the unit of work (worker/infra/unit_of_work.py), never by a handler.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable

from sqlalchemy import Connection, Table

from handlers.ports import Effects, Erasures, Store


class PermanentEventError(Exception):
    """Raised when an event can never be processed (malformed payload): no retry, kept as failed."""


@dataclass(frozen=True)
class StripeEvent:
    """A stored Stripe event, parsed once."""

    id: str
    type: str
    created: int
    api_version: str | None
    livemode: bool
    payload: dict

    @property
    def object(self) -> dict:
        obj = (self.payload.get("data") or {}).get("object")
        if not isinstance(obj, dict):
            raise PermanentEventError(f"event {self.id} has no data.object")
        return obj

    @property
    def previous_attributes(self) -> dict:
        prev = (self.payload.get("data") or {}).get("previous_attributes")
        return prev if isinstance(prev, dict) else {}


@dataclass
class HandlerContext:
    conn: Connection
    now: datetime
    db: Store
    settings: Any  # config.settings.Settings (first_email_delay_seconds, outbox folders)
    policy: Any  # handlers.policy.Policy
    effects: Effects
    erasures: Erasures
    event: StripeEvent | None = None  # None when a timer (scheduler step) is the cause
    log: Any = None
    _after_commit: list[Callable[[], None]] = field(default_factory=list)
    _after_commit_slow: list[Callable[[], None]] = field(default_factory=list)
    as_of: datetime | None = None  # the scheduler's instant (`dunning tick --at`) when a timer is the cause
    prefetched: dict | None = None  # read from Stripe before the transaction (worker.intake.payment_prefetch)
    # What this transaction already knows, so it is not asked again: the customer whose row it holds
    # (worker.privacy.erasure.hold_customer), whether a customer is erased (handlers.facts.erased_in) and
    # rows it wrote or locked (handlers.facts.remember).
    held_customer: str | None = None
    erased: dict[str, bool] = field(default_factory=dict)
    rows: dict[tuple[str, str], dict] = field(default_factory=dict)
    opened_cases: set[str] = field(default_factory=set)  # cases this transaction inserted (no mail of theirs exists)
    recovered_cases: set[str] = field(default_factory=set)  # cases this transaction moved to recovered (no
    # payment-received email of theirs exists: it is written only once a case ended paid)
    inserted_invoices: set[str] = field(default_factory=set)  # invoices this transaction inserted (upsert_invoice)

    @property
    def clock(self) -> datetime:
        """The instant decisions about the owner's calendar are made at: the scheduler's, else now."""
        return self.as_of or self.now

    def table(self, name: str) -> Table:
        return self.db.table(name)

    def after_commit(self, fn: Callable[[], None], *, slow: bool = False) -> None:
        """Run fn once this transaction has committed (never inside it). `slow` work (a delivery
        made in this thread) runs after the rest, so no enqueue waits on a provider's round trip."""
        if slow:
            self._after_commit_slow.append(fn)
        else:
            self._after_commit.append(fn)

    def run_after_commit(self) -> None:
        callbacks = self._after_commit + self._after_commit_slow
        self._after_commit, self._after_commit_slow = [], []
        for fn in callbacks:
            try:
                fn()
            except Exception as exc:  # the row is durable: a sweeper will pick it up later
                if self.log is not None:
                    self.log.warning("after_commit.failed", error=str(exc)[:300])
