"""Enqueue leases: cases.steps_enqueued_at, emails.enqueued_at, platform_notices.enqueued_at.

Revision ID: 0002_enqueue_leases
Revises: 0001_baseline
Create Date: 2026-12-03

The scheduler records when it queued a message for a row and does not queue another before
the lease lapses (handlers.steps.ENQUEUE_LEASE), so a backlog or a second host does not fill
the broker with copies. NULL (every existing row) means "nothing queued": the old behaviour.
"""
from alembic import op
import sqlalchemy as sa

revision = "0002_enqueue_leases"
down_revision = "0001_baseline"
branch_labels = None
depends_on = None

COLUMNS = (("cases", "steps_enqueued_at"), ("emails", "enqueued_at"), ("platform_notices", "enqueued_at"))


def upgrade() -> None:
    for table, column in COLUMNS:
        op.add_column(table, sa.Column(column, sa.TIMESTAMP(), nullable=True))


def downgrade() -> None:
    for table, column in COLUMNS:
        with op.batch_alter_table(table) as batch:
            batch.drop_column(column)
