"""The owner's language: customers.locale (issue 14).

Revision ID: 0006_owner_locale
Revises: 0005_account_emails
Create Date: 2026-12-03

customers.locale holds the first supported locale of the customer's Stripe `preferred_locales`
(worker.email_locale), written by every customer.* event and Stripe read of the customer. Existing
rows get NULL: their emails use the policy's [emails] default_locale until the next customer event
or read brings Stripe's preferences.
"""
from alembic import op
import sqlalchemy as sa

revision = "0006_owner_locale"
down_revision = "0005_account_emails"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("customers", sa.Column("locale", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("customers") as batch:
        batch.drop_column("locale")
