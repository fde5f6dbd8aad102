"""The domain's Effects port (handlers/ports.py) over the outbox and the queue.

Rows go to the outbox in the handler's transaction; their senders (and Stripe jobs) are queued
after it commits, through the runtime's actors.
"""

from __future__ import annotations

from typing import Any

from handlers.dedupe_keys import EmailKey
from worker.delivery import outbox


class _OutboxScope:
    """The handler's context as the outbox reads it, plus the runtime its after-commit sends go through."""

    def __init__(self, ctx, runtime):
        self._ctx = ctx
        self.runtime = runtime

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)


class OutboxEffects:
    def __init__(self, runtime):
        self._runtime = runtime

    def case_email(self, ctx, template: str, case_id: str, key: EmailKey, extra: dict | None = None,
                   delay_seconds: int = 0, case: dict | None = None) -> str | None:
        return outbox.add_case_email(_OutboxScope(ctx, self._runtime), template, case_id, key, extra,
                                     delay_seconds=delay_seconds, case=case)

    def step_email(self, ctx, case: dict, index: int, template: str, *, delay_seconds: int = 0) -> str | None:
        from worker.delivery import account_emails
        return account_emails.add_step_email(_OutboxScope(ctx, self._runtime), case, index, template,
                                             delay_seconds=delay_seconds)

    def customer_email(self, ctx, template: str, customer_id: str, key: EmailKey,
                       extra: dict | None = None, invoice_id: str | None = None) -> str | None:
        return outbox.add_customer_email(_OutboxScope(ctx, self._runtime), template, customer_id, key,
                                         extra, invoice_id=invoice_id)

    def notice(self, ctx, type: str, account_id: str, dedupe_key: str, **fields) -> str | None:
        return outbox.add_notice(_OutboxScope(ctx, self._runtime), type, account_id, dedupe_key, **fields)

    def retry_invoice(self, ctx, retry_id: str) -> None:
        actors = self._runtime.actors
        ctx.after_commit(lambda: actors.retry_invoice.send(retry_id))

    def recipient(self, policy, customer: dict | None) -> str | None:
        return outbox.resolve_recipient(policy, customer)
