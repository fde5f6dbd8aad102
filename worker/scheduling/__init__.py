"""Periodic work: the scheduler's pass, its leadership lock across hosts, the monthly scan of
expiring cards.

Owns: what happens because time passed. May import: worker.pure, worker.infra, worker.observe,
worker.intake, worker.delivery, worker.stripe, worker.privacy, handlers, config.
"""
