"""One email per account and step (issue 14): which email satisfied each invoice's step.

Revision ID: 0005_account_emails
Revises: 0004_metric_counts
Create Date: 2026-12-03

- email_steps: one row per (case, schedule step), keyed `case:<id>:step:<n>`, naming the email that
  satisfied it: an account email covers the steps of several invoices of one customer.
- emails.invoice_ids: every invoice an account email covers (X-Dunning-Invoice), NULL for one.
- index emails (customer_id, template, status): a step finds the account's email still held.
- cases.card_exp_month, card_exp_year: the expiry of the card whose payment failed, read from the
  failed payment on day 0 (brand, last four and expiry are all that is kept of a card).
Existing step emails keep their `case:<id>:step:<n>` dedupe key, which is still read as the claim.
"""
from worker.infra import migration_steps
import sqlalchemy as sa

revision = "0005_account_emails"
down_revision = "0004_metric_counts"
branch_labels = None
depends_on = None

DROPPED_TABLES = ("email_steps",)  # by downgrade(): the table TABLES creates
COLUMNS = (
    ("emails", sa.Column("invoice_ids", sa.Text(), nullable=True)),
    ("cases", sa.Column("card_exp_month", sa.Integer(), nullable=True)),
    ("cases", sa.Column("card_exp_year", sa.Integer(), nullable=True)),
)

# Copied from schema.sql (op.execute keeps TEXT PRIMARY KEY NOT NULL on SQLite, as schema.sql does).
TABLES = ("""
CREATE TABLE IF NOT EXISTS email_steps (
    dedupe_key  TEXT PRIMARY KEY,
    email_id    TEXT NOT NULL,
    case_id     TEXT NOT NULL,
    invoice_id  TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    step        INTEGER NOT NULL,
    created_at  TIMESTAMP NOT NULL
)""",)

INDEXES = (
    "CREATE INDEX IF NOT EXISTS emails_customer_template ON emails (customer_id, template, status)",
    "CREATE INDEX IF NOT EXISTS email_steps_email ON email_steps (email_id)",
    "CREATE INDEX IF NOT EXISTS email_steps_case ON email_steps (case_id)",
)


def upgrade() -> None:
    migration_steps.add(COLUMNS, TABLES + INDEXES)


def downgrade() -> None:
    migration_steps.drop(COLUMNS, INDEXES, DROPPED_TABLES)
