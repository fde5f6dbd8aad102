"""Infrastructure: the database (engine, tables, transactions), the unit of work that runs domain
code in one transaction, schema migrations, the pooled outgoing HTTP client, the embedded
Redis-compatible server.

Owns: what every room shares to reach the database and the network.

May import: the rooms beside it (no module cycle), the domain (handlers), config and worker.pure;
never the composition root (worker.runtime) or the CLI. Enforced by [tool.importlinter] in pyproject.toml.
"""
