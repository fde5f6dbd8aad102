"""Metric counts: /metrics reads counts kept by triggers instead of grouping whole tables (issue 13).

Revision ID: 0004_metric_counts
Revises: 0003_owner_safety
Create Date: 2026-12-03

- table metric_counts: rows per (family, labels, shard), moved by triggers on events, cases,
  case_transitions, emails, platform_notices, payment_links and card_retries in the statement
  that writes the counted row (worker/metric_counts.py makes them for PostgreSQL and SQLite);
- indexes emails_pending_age and platform_notices_pending_age: the oldest undelivered row in
  one index step.
Existing rows are counted once here (one GROUP BY per table, in this transaction: creating the
triggers locks the tables against writes until it commits, so no write is counted twice or lost).
The triggers come from the current worker.metric_counts: a later change of FAMILIES brings its
own revision that installs them again and recounts.
"""
from alembic import op

from worker.observe import metric_counts

revision = "0004_metric_counts"
down_revision = "0003_owner_safety"
branch_labels = None
depends_on = None

# Copied from schema.sql.
TABLE = """
CREATE TABLE IF NOT EXISTS metric_counts (
    family      TEXT NOT NULL,
    label1      TEXT NOT NULL DEFAULT '',
    label2      TEXT NOT NULL DEFAULT '',
    label3      TEXT NOT NULL DEFAULT '',
    label4      TEXT NOT NULL DEFAULT '',
    shard       INTEGER NOT NULL DEFAULT 0,
    n           BIGINT NOT NULL DEFAULT 0,
    total       BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (family, label1, label2, label3, label4, shard)
)"""
INDEXES = (
    "CREATE INDEX IF NOT EXISTS emails_pending_age ON emails (status, created_at)",
    "CREATE INDEX IF NOT EXISTS platform_notices_pending_age ON platform_notices (status, created_at)",
)


def upgrade() -> None:
    op.execute(TABLE)
    for statement in INDEXES:
        op.execute(statement)
    conn = op.get_bind()
    metric_counts.install_triggers(conn)
    metric_counts.recount(conn)


def downgrade() -> None:
    metric_counts.drop_triggers(op.get_bind())
    for statement in INDEXES:
        op.execute("DROP INDEX IF EXISTS " + statement.split(" IF NOT EXISTS ")[1].split(" ON ")[0])
    op.drop_table("metric_counts")
