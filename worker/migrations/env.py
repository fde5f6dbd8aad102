"""Alembic's environment: runs the revisions on the connection `worker.infra.migrate` hands over.

One transaction for the whole upgrade (PostgreSQL's DDL is transactional: a failing revision
leaves the database as it was), serialized by an advisory lock so two hosts running
`dunning db upgrade` at once do not race. SQLite already holds its write lock (BEGIN IMMEDIATE).
render_as_batch lets a revision alter a column on SQLite (table copy) with the same code.
"""

from alembic import context
from sqlalchemy import text

from worker.infra.advisory_locks import MIGRATION as MIGRATION_LOCK  # `Database.init_schema` takes it too

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=None, render_as_batch=True,
                  transaction_per_migration=False)
with context.begin_transaction():
    if connection.dialect.name == "postgresql":
        connection.execute(text(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"))
    context.run_migrations()
