"""Schema migrations: Alembic revisions under worker/migrations, run by `dunning db upgrade`.

schema.sql stays the readable whole schema (tests build their databases from it); the revisions
are how an existing database gets there. tests/integration/test_migrations.py applies every revision and
checks the result equals schema.sql, so one cannot change without the other.
The Alembic configuration is built here, not read from an alembic.ini: the revisions travel
inside the package and work from any directory.
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from worker.infra.db import Database

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"  # worker/migrations
BASELINE = "0001_baseline"


# Alembic's own INFO lines ("Context impl SQLiteImpl.") are noise here: callers report before/after.
logging.getLogger("alembic").setLevel(logging.WARNING)


def alembic_config(connection=None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def upgrade(db: Database, revision: str = "head") -> tuple[str | None, str | None]:
    """Bring the database to `revision`; returns (revision before, revision after)."""
    before = current_revision(db)
    with db.transaction() as conn:
        command.upgrade(alembic_config(conn), revision)
        _keep_counting(conn)
    db._tables = None  # reflect the new shape on next use
    return before, current_revision(db)


def _keep_counting(conn) -> None:
    """Put back any metric-counting trigger a revision lost: on SQLite a batch ALTER (table copy)
    drops the old table's triggers with it (worker/observe/metric_counts.py)."""
    from sqlalchemy import inspect

    from worker.observe.metric_counts import install_triggers
    if inspect(conn).has_table("metric_counts"):
        install_triggers(conn)


def downgrade(db: Database, revision: str) -> None:
    with db.transaction() as conn:
        command.downgrade(alembic_config(conn), revision)
    db._tables = None


def current_revision(db: Database) -> str | None:
    """The revision recorded in the database (None: empty, or made by the old `db init`)."""
    with db.reading(snapshot=True) as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revisions() -> list[str]:
    """The newest revision(s); more than one means two branches need a merge revision."""
    return list(ScriptDirectory.from_config(alembic_config()).get_heads())


def new_revision(message: str) -> str:
    """Write an empty revision file after the current head; returns its path."""
    script = command.revision(alembic_config(), message=message)
    return script.path
