"""Observability: structured logs (one line per record, secrets scrubbed), per-message log ids,
Prometheus metrics, error tracking, `dunning stats` counts.

Owns: what the service says about itself. May import: worker.pure, worker.infra, worker.queue
(queue depths for /metrics), worker.intake (the reconciler's count), handlers, config.
"""
