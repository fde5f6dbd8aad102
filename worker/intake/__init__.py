"""Event intake: Stripe signatures, the events table (store once, before acting), processing one
stored event through its handler, the prefetch of what a handler needs from Stripe, the
reconciler and the backfill from Stripe's Events API.

Owns: a Stripe event from arrival to handled. May import: worker.pure, worker.infra,
worker.observe, worker.privacy, worker.stripe (the gateway), handlers, config.
"""
