"""The dunning worker: Stripe events in, dunning cases driven, owners and the platform told.

One room per subsystem (web, console, scheduling, queue, intake, stripe, delivery, privacy,
observe, infra), the pure helpers (pure/), the CLI (cli/) and the composition root (runtime.py):
README "Layout" says what each owns and may import.
"""

