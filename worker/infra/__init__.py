"""Infrastructure: the database (engine, tables, transactions), schema migrations, the pooled
outgoing HTTP client, the embedded Redis-compatible server.

Owns: connections to the outside that every room shares. May import: worker.pure, config.
"""
