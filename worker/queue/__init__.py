"""The queue: the Dramatiq broker (set up explicitly), the thin actors, what the broker holds,
dead letters, and the supervisor that keeps the worker pool running.

Owns: moving ids between processes. The actors receive the runtime from the composition root.

May import: the rooms beside it (no module cycle), the domain (handlers), config and worker.pure;
never the composition root (worker.runtime) or the CLI. Enforced by [tool.importlinter] in pyproject.toml.
"""
