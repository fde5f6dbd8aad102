"""Observability: structured logs (one line per record, secrets scrubbed), the ids bound per
message, Prometheus metrics, error tracking, `dunning stats` counts.

Owns: what the service says about itself.

May import: the rooms beside it (no module cycle), the domain (handlers), config and worker.pure;
never the composition root (worker.runtime) or the CLI. Enforced by [tool.importlinter] in pyproject.toml.
"""
