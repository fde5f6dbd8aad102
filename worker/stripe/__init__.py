"""Calls to Stripe: the gateway (the only module that talks to the Stripe API), card retries,
payment links, and the sweeper of Stripe jobs whose message was lost.

Owns: every outgoing Stripe call. May import: worker.pure, worker.infra, worker.observe,
worker.delivery (outbox), worker.privacy, handlers, config.
"""
