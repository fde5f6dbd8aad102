"""One unit of work: open the transaction, build the handler's context, commit, then the after-commit work.

Every entry point that runs domain code (event processing, due steps, card retries, payment links,
erasure, reachability, customer prefetch) goes through `unit_of_work`, so the after-commit work
(enqueue the rows just written) can neither run inside the transaction nor be forgotten. An
exception rolls the transaction back and drops the after-commit work with it.
"""

from __future__ import annotations

from contextlib import contextmanager
from datetime import datetime
from typing import Any, Iterator

from handlers.context import HandlerContext, StripeEvent
from worker.pure.clock import utcnow


def context_in(runtime, conn, now: datetime | None = None, event: StripeEvent | None = None, log: Any = None,
               as_of: datetime | None = None, prefetched: dict | None = None) -> HandlerContext:
    """The handler's context on an open connection: the ports the composition root (worker.runtime) wired."""
    return HandlerContext(conn=conn, now=now or utcnow(), db=runtime.db, settings=runtime.settings,
                          policy=runtime.policy, effects=runtime.effects, erasures=runtime.erasures,
                          event=event, log=log, as_of=as_of, prefetched=prefetched)


@contextmanager
def unit_of_work(runtime, **context: Any) -> Iterator[HandlerContext]:
    """`with unit_of_work(runtime) as ctx:` one transaction; after it commits, ctx's after-commit work runs."""
    runtime.db.tables  # reflect before the transaction (on SQLite reflecting inside one would wait on it)
    with runtime.db.transaction() as conn:
        ctx = context_in(runtime, conn, **context)
        yield ctx
    ctx.run_after_commit()
