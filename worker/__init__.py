"""The dunning worker: Stripe events in, dunning cases driven, owners and the platform told.

One room per subsystem (web, console, scheduling, queue, intake, stripe, delivery, privacy,
observe, infra), the pure helpers (pure/), the CLI (cli/) and the composition root (runtime.py):
README "Layout" says what each owns and may import.
"""


def __getattr__(name: str):
    """A bridge for one caller this branch may not edit: the Alembic revision 0004_metric_counts
    (worker/migrations/versions, renumbered by the lead) runs `from worker import metric_counts`,
    written before the module moved to worker/observe/. Remove once that revision imports
    `worker.observe.metric_counts` (`python3 /work/tools/rehome.py ROOT worker/migrations/versions`)."""
    if name == "metric_counts":
        from worker.observe import metric_counts
        return metric_counts
    raise AttributeError(f"module 'worker' has no attribute {name!r}")
