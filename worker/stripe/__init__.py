"""Calls to Stripe: the gateway (the only module that talks to the Stripe API), what Stripe says
of a case before a step, card retries, payment links, and the sweeper of Stripe jobs whose
message was lost.

Owns: every outgoing Stripe call.

May import: the rooms beside it (no module cycle), the domain (handlers), config and worker.pure;
never the composition root (worker.runtime) or the CLI. Enforced by [tool.importlinter] in pyproject.toml.
"""
