"""Owner safety, the console, privacy: the columns, tables and indexes of issues 12, 16 and 19.

Revision ID: 0003_owner_safety
Revises: 0002_enqueue_leases
Create Date: 2026-12-03

- events: object_id (the console finds a case's events by index); failed_transient,
  first_failed_at, redrive_at (the reconciler re-drives transient failures for Stripe's window).
- cases: owner_unreachable and hold_released (an unreachable owner holds disruption until an
  operator releases it); last_email_at, warned_at, final_notice_at (a warning period that is
  real, min_gap_hours); verify_failures (backoff while Stripe cannot confirm a disrupt).
- tables: console_actions and console_snapshots (the console's audit trail and recovery view),
  erasures (who erased whom, when, why), case_releases (who released a held case, why).
Existing rows get the defaults: reachable, not released, no re-drive pending, no event object id
(the console's case page then lists fewer events for cases older than this release).
"""
from worker.infra import migration_steps
import sqlalchemy as sa

revision = "0003_owner_safety"
down_revision = "0002_enqueue_leases"
branch_labels = None
depends_on = None

COLUMNS = (
    ("events", sa.Column("object_id", sa.Text(), nullable=True)),
    ("events", sa.Column("failed_transient", sa.Boolean(), nullable=False, server_default=sa.text("FALSE"))),
    ("events", sa.Column("first_failed_at", sa.TIMESTAMP(), nullable=True)),
    ("events", sa.Column("redrive_at", sa.TIMESTAMP(), nullable=True)),
    ("cases", sa.Column("owner_unreachable", sa.Integer(), nullable=False, server_default=sa.text("0"))),
    ("cases", sa.Column("hold_released", sa.Integer(), nullable=False, server_default=sa.text("0"))),
    ("cases", sa.Column("last_email_at", sa.TIMESTAMP(), nullable=True)),
    ("cases", sa.Column("warned_at", sa.TIMESTAMP(), nullable=True)),
    ("cases", sa.Column("final_notice_at", sa.TIMESTAMP(), nullable=True)),
    ("cases", sa.Column("verify_failures", sa.Integer(), nullable=False, server_default=sa.text("0"))),
)

# Copied from schema.sql (op.execute keeps TEXT PRIMARY KEY NOT NULL on SQLite, as schema.sql does).
TABLES = ("""
CREATE TABLE IF NOT EXISTS console_actions (
    id          TEXT PRIMARY KEY,
    at          TIMESTAMP NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    case_id     TEXT,
    invoice_id  TEXT NOT NULL,
    target      TEXT,
    reason      TEXT NOT NULL,
    outcome     TEXT
)""", """
CREATE TABLE IF NOT EXISTS console_snapshots (
    name        TEXT PRIMARY KEY,
    computed_at TIMESTAMP NOT NULL,
    body        TEXT NOT NULL
)""", """
CREATE TABLE IF NOT EXISTS erasures (
    customer_id     TEXT PRIMARY KEY,
    erased_at       TIMESTAMP NOT NULL,
    requested_by    TEXT NOT NULL,
    event_id        TEXT,
    reason          TEXT NOT NULL
)""", """
CREATE TABLE IF NOT EXISTS case_releases (
    id          TEXT PRIMARY KEY,
    case_id     TEXT NOT NULL,
    released_by TEXT NOT NULL,
    reason      TEXT NOT NULL,
    released_at TIMESTAMP NOT NULL
)""")

INDEXES = (
    "CREATE INDEX IF NOT EXISTS events_object ON events (object_id, created)",
    "CREATE INDEX IF NOT EXISTS customers_email ON customers (email)",
    "CREATE INDEX IF NOT EXISTS invoices_number ON invoices (number)",
    "CREATE INDEX IF NOT EXISTS cases_subscription ON cases (subscription_id)",
    "CREATE INDEX IF NOT EXISTS cases_opened_page ON cases (opened_at, id)",
    "CREATE INDEX IF NOT EXISTS cases_state_opened_page ON cases (state, opened_at, id)",
    "CREATE INDEX IF NOT EXISTS cases_amount_page ON cases (amount_due, id)",
    "CREATE INDEX IF NOT EXISTS cases_state_amount_page ON cases (state, amount_due, id)",
    "CREATE INDEX IF NOT EXISTS cases_disrupt_page ON cases (disrupt_at, id) WHERE disrupt_at IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS cases_unreachable_page ON cases (opened_at, id) WHERE owner_unreachable = 1",
    "CREATE INDEX IF NOT EXISTS emails_invoice ON emails (invoice_id)",
    "CREATE INDEX IF NOT EXISTS platform_notices_case ON platform_notices (case_id)",
    "CREATE INDEX IF NOT EXISTS platform_notices_invoice ON platform_notices (invoice_id)",
    "CREATE INDEX IF NOT EXISTS card_retries_invoice ON card_retries (invoice_id)",
    "CREATE INDEX IF NOT EXISTS console_actions_invoice ON console_actions (invoice_id, at)",
    "CREATE INDEX IF NOT EXISTS case_releases_case ON case_releases (case_id)",
    "CREATE INDEX IF NOT EXISTS cases_unreachable ON cases (owner_unreachable)",
    "CREATE INDEX IF NOT EXISTS events_failed_transient ON events (status, failed_transient)",
)
DROPPED_TABLES = ("case_releases", "erasures", "console_snapshots", "console_actions")


def upgrade() -> None:
    migration_steps.add(COLUMNS, TABLES + INDEXES)


def downgrade() -> None:
    migration_steps.drop(COLUMNS, INDEXES, DROPPED_TABLES)
