"""Event intake: Stripe signatures, the events table (store once, before acting), processing one
stored event through its handler, the prefetch of what a handler needs from Stripe, the
reconciler and the backfill from Stripe's Events API.

Owns: a Stripe event from arrival to handled.

May import: the rooms beside it (no module cycle), the domain (handlers), config and worker.pure;
never the composition root (worker.runtime) or the CLI. Enforced by [tool.importlinter] in pyproject.toml.
"""
