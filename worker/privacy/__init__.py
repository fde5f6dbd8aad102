"""Customers' data: where it sits (the one map), erasure (and the domain's Erasures port),
export, and retention pruning.

Owns: a customer's personal data over its life.

May import: the rooms beside it (no module cycle), the domain (handlers), config and worker.pure;
never the composition root (worker.runtime) or the CLI. Enforced by [tool.importlinter] in pyproject.toml.
"""
