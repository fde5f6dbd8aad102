"""What the domain needs from the world, stated as small ports; worker/ implements them (adapters).

Handlers never import the outbox, the queue or the Stripe gateway: they ask these ports, which
the unit of work (worker/infra/unit_of_work.py) hands them in the HandlerContext. Every effect is
written in the handler's own transaction (an outbox row) and queued only after it commits.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Mapping, Protocol

from sqlalchemy import Connection, Table

from handlers.dedupe_keys import EmailKey


class Store(Protocol):
    """The database as the domain uses it: the schema's tables and statements built once per table."""

    @property
    def tables(self) -> Mapping[str, Table]: ...

    def table(self, name: str) -> Table: ...

    @property
    def is_sqlite(self) -> bool:
        """True where one writer at a time holds the whole database (no row locks to take)."""

    def lock(self, stmt: Any) -> Any:
        """The SELECT ... FOR UPDATE of `stmt` (a no-op where the database locks whole files)."""

    def insert_ignore(self, table: Table, values: Any, *keys: str) -> Any:
        """INSERT ... ON CONFLICT (keys) DO NOTHING."""

    def insert_new(self, conn: Connection, table: Table, values: dict[str, Any], *keys: str) -> bool:
        """Insert unless the keys exist; True when this call wrote the row."""

    def insert_or_lock(self, conn: Connection, table: Table, values: dict[str, Any], key: str,
                       untouched: str) -> Mapping[str, Any]:
        """Insert, or lock the stored row unchanged, in one statement; the row either way."""

    def insert_new_row(self, conn: Connection, table: Table, values: dict[str, Any],
                       *keys: str) -> Mapping[str, Any] | None:
        """`insert_new` returning the row as stored, None when the keys existed."""

    def insert(self, conn: Connection, table: Table, values: dict[str, Any]) -> None:
        """A plain INSERT of one row."""

    def run(self, conn: Connection, stmt: Any, params: dict[str, Any]) -> Any:
        """A statement built once (bound parameters), run with `params`; SQLAlchemy's result calls."""

    def update_by(self, conn: Connection, table: Table, values: dict[str, Any], *, returning: bool = False,
                  **equal: Any) -> Any:
        """UPDATE ... SET values WHERE each `equal` column equals its value (RETURNING the rows)."""

    def row_by(self, conn: Connection, table: Table, **equal: Any) -> dict[str, Any] | None:
        """The row WHERE each `equal` column equals its value, as a dict; None when there is none."""


class Effects(Protocol):
    """Effects of a decision: rows written in the handler's transaction, their work queued after commit.

    Each returns the new row's id, or None when its dedupe key already exists (nothing twice).
    """

    def case_email(self, ctx: Any, template: str, case_id: str, key: EmailKey, extra: dict | None = None,
                   delay_seconds: int = 0, case: dict | None = None) -> str | None:
        """An email about a case to its owner of record (the policy names the address)."""

    def step_email(self, ctx: Any, case: dict, index: int, template: str, *, delay_seconds: int = 0) -> str | None:
        """Satisfy step `index` of the (locked) case by an email: its own, or one account email shared
        with the customer's other unpaid invoices whose steps fall due together (issue 14). The id of
        the email that satisfies it, None when refused (no owner address, erased)."""

    def customer_email(self, ctx: Any, template: str, customer_id: str, key: EmailKey,
                       extra: dict | None = None, invoice_id: str | None = None) -> str | None:
        """An email to a customer's owner of record, not tied to a case."""

    def notice(self, ctx: Any, type: str, account_id: str, dedupe_key: str, *, case_id: str | None,
               invoice_id: str | None, customer_id: str, subscription_id: str | None,
               disrupt_at: datetime | None) -> str | None:
        """A platform notice, delivered in order per account."""

    def retry_invoice(self, ctx: Any, retry_id: str) -> None:
        """Queue the Stripe job that retries an invoice with a new card (its row is written by the caller)."""

    def recipient(self, policy: Any, customer: dict | None) -> str | None:
        """The one address mail to this customer would go to, or None when there is no deliverable one."""


class Erasures(Protocol):
    """Erasing a customer's personal data inside the caller's transaction."""

    def erase(self, ctx: Any, customer_id: str, *, requested_by: str, reason: str,
              event_id: str | None = None) -> dict: ...
