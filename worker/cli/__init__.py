"""`dunning`: the operators' command line. Every read command has --json.

The entry point (`dunning = "worker.cli:main"`) and the composition of the command groups: each
group module registers itself on `main` (worker/cli/base.py) when imported here. `dunning run`
(worker/cli/launcher.py) starts the whole service. This room sits above every other one: it may
import any room and the composition root (worker.runtime); no room imports it.
"""

from worker.cli.base import emit, get_runtime, main  # noqa: F401  (the entry point and what groups share)

# Command groups live in their own modules; each registers itself on `main` when imported.
from worker.cli import core  # noqa: F401  (db, stats, events, tick, run, web, worker, scheduler)
from worker.cli import policy  # noqa: F401  (policy show)
from worker.cli import accounts  # noqa: F401  (accounts show)
from worker.cli import cases  # noqa: F401  (cases list, cases show)
from worker.cli import outbox  # noqa: F401  (outbox list, outbox retry)
from worker.cli import dlq  # noqa: F401  (dlq list, dlq requeue)
from worker.cli import cards  # noqa: F401  (cards show)
from worker.cli import payment_links  # noqa: F401  (payment-link)
from worker.cli import backfill  # noqa: F401  (events backfill)
from worker.cli import emails  # noqa: F401  (emails preview)
from worker.cli import notices  # noqa: F401  (notices redeliver)
from worker.cli import privacy  # noqa: F401  (customers erase/export, data prune)
from worker.cli import stripe_setup  # noqa: F401  (stripe webhook-endpoint create)
