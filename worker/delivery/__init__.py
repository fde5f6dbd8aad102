"""Delivery of effects: the outbox rows, email rendering and context, sending email (SendGrid or a
folder) and platform notices (signed, in order), their sweeps and redelivery.

Owns: telling owners and the platform, once each. May import: worker.pure, worker.infra,
worker.observe, worker.privacy, worker.intake (signatures), handlers, config.
"""
