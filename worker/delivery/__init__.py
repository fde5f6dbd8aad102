"""Delivery of effects: the outbox rows and the domain's Effects port over them, email rendering
and context, sending email (SendGrid or a folder) and platform notices (signed, in order),
their sweeps, redelivery and retry, and the owner's reachability as providers report it.

Owns: telling owners and the platform, once each.

May import: the rooms beside it (no module cycle), the domain (handlers), config and worker.pure;
never the composition root (worker.runtime) or the CLI. Enforced by [tool.importlinter] in pyproject.toml.
"""
