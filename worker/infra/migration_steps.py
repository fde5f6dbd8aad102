"""What a schema revision does with its new columns, tables and indexes, written once.

Revisions (worker/migrations/versions) that add columns, create tables from schema.sql's text and
create indexes apply and revert them the same way; they call these two functions instead of each
holding a copy. A revision is history: change what these do only by adding a function, never by
altering one that a revision calls.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op


def add(columns: Sequence = (), statements: Sequence[str] = ()) -> None:
    """Add the (table, Column) pairs, then run the CREATE TABLE / CREATE INDEX statements."""
    for table, column in columns:
        op.add_column(table, column)
    for statement in statements:
        op.execute(statement)


def drop(columns: Sequence = (), indexes: Sequence[str] = (), tables: Sequence[str] = ()) -> None:
    """Undo add(): the indexes (named in their CREATE INDEX IF NOT EXISTS statements), the tables,
    then the columns (batch mode: SQLite copies the table)."""
    for statement in indexes:
        op.execute("DROP INDEX IF EXISTS " + statement.split(" IF NOT EXISTS ")[1].split(" ON ")[0])
    for table in tables:
        op.drop_table(table)
    for table, column in reversed(columns):
        with op.batch_alter_table(table) as batch:
            batch.drop_column(column.name)
