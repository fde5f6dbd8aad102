"""Periodic work: the scheduler's pass, its leadership lock across hosts, the durable timers
(enqueue due cases, run their due steps), the monthly scan of expiring cards.

Owns: what happens because time passed.

May import: the rooms beside it (no module cycle), the domain (handlers), config and worker.pure;
never the composition root (worker.runtime) or the CLI. Enforced by [tool.importlinter] in pyproject.toml.
"""
