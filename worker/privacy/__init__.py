"""Customers' data: where it sits (the one map), erasure, export, and retention pruning.

Owns: a customer's personal data over its life. May import: worker.pure, worker.infra,
worker.observe, handlers, config.
"""
