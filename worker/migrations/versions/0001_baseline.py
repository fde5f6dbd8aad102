"""Baseline: the schema as `dunning db init` applied it from schema.sql up to release 0.1.0.

Revision ID: 0001_baseline
Revises:
Create Date: 2026-12-03

A frozen copy of that schema.sql, not a read of the file: later changes to schema.sql must come
with a revision of their own (tests/integration/test_migrations.py fails otherwise). Every statement is
IF NOT EXISTS, so a database made by the old `db init` passes through unchanged and is stamped.
"""
import re

from alembic import op

revision = "0001_baseline"
down_revision = None
branch_labels = None
depends_on = None

TABLES = ("events", "customers", "subscriptions", "invoices", "cases", "case_transitions", "emails",
          "platform_notices", "accounts", "payment_links", "cards", "card_retries", "cursors")

BASELINE_SQL = r"""
-- The dunning worker's schema: the single source, applied by `dunning db init`.
-- It runs unchanged on PostgreSQL and SQLite: portable types only, every statement idempotent
-- (IF NOT EXISTS), ids are text made by the application, times are naive UTC TIMESTAMPs.

-- Every Stripe event we accepted, stored before the webhook answers 2xx (dedupe on Stripe's id).
CREATE TABLE IF NOT EXISTS events (
    id              TEXT PRIMARY KEY,           -- Stripe's evt_... id
    type            TEXT NOT NULL,
    api_version     TEXT,
    created         BIGINT NOT NULL,            -- Stripe's unix seconds: orders facts about one object
    livemode        BOOLEAN NOT NULL DEFAULT FALSE,
    payload         TEXT NOT NULL,              -- the raw body as Stripe signed it
    source          TEXT NOT NULL DEFAULT 'webhook',  -- webhook | backfill
    received_at     TIMESTAMP NOT NULL,
    status          TEXT NOT NULL DEFAULT 'received', -- received | processing | processed | failed | ignored
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    enqueued_at     TIMESTAMP,                  -- last time a message for it went to the broker
    lease_until     TIMESTAMP,                  -- while processing: after this the reconciler may retry
    processed_at    TIMESTAMP
);
CREATE INDEX IF NOT EXISTS events_status_received ON events (status, received_at);
CREATE INDEX IF NOT EXISTS events_type ON events (type);

-- What we know of each Stripe customer: the owner of record and the platform's metadata.
CREATE TABLE IF NOT EXISTS customers (
    id                      TEXT PRIMARY KEY,   -- cus_...
    email                   TEXT,
    name                    TEXT,
    metadata                TEXT NOT NULL DEFAULT '{}',  -- JSON object
    default_payment_method  TEXT,               -- pm_... or card/src id
    deleted                 BOOLEAN NOT NULL DEFAULT FALSE,
    source_created          BIGINT NOT NULL DEFAULT 0,   -- created of the event or fetch that wrote it
    updated_at              TIMESTAMP NOT NULL
);

CREATE TABLE IF NOT EXISTS subscriptions (
    id              TEXT PRIMARY KEY,           -- sub_...
    customer_id     TEXT NOT NULL,
    status          TEXT,
    metadata        TEXT NOT NULL DEFAULT '{}',
    source_created  BIGINT NOT NULL DEFAULT 0,
    updated_at      TIMESTAMP NOT NULL
);
CREATE INDEX IF NOT EXISTS subscriptions_customer ON subscriptions (customer_id);

-- The latest known state of each invoice we heard of; final statuses (paid, void, uncollectible) stick.
CREATE TABLE IF NOT EXISTS invoices (
    id                  TEXT PRIMARY KEY,       -- in_...
    customer_id         TEXT NOT NULL,
    subscription_id     TEXT,
    number              TEXT,
    status              TEXT NOT NULL,          -- draft | open | paid | void | uncollectible
    currency            TEXT NOT NULL,
    amount_due          BIGINT NOT NULL DEFAULT 0,   -- minor units, as Stripe gives them
    amount_remaining    BIGINT NOT NULL DEFAULT 0,
    hosted_invoice_url  TEXT,
    invoice_pdf         TEXT,
    payment_intent      TEXT,
    price_ids           TEXT NOT NULL DEFAULT '[]',  -- JSON list, to pick a per-price schedule
    product_ids         TEXT NOT NULL DEFAULT '[]',
    source_created      BIGINT NOT NULL DEFAULT 0,
    updated_at          TIMESTAMP NOT NULL
);
CREATE INDEX IF NOT EXISTS invoices_customer ON invoices (customer_id);

-- One dunning case per failed invoice: the state machine's row.
CREATE TABLE IF NOT EXISTS cases (
    id                      TEXT PRIMARY KEY,   -- dc_...
    invoice_id              TEXT NOT NULL UNIQUE,
    customer_id             TEXT NOT NULL,
    subscription_id         TEXT,
    account_id              TEXT NOT NULL,      -- the disruption timeline it belongs to (subscription, else customer)
    state                   TEXT NOT NULL,      -- failing | disruption_scheduled | disrupted | recovered | uncollectible | voided
    schedule                TEXT NOT NULL,      -- name of the policy schedule in force
    currency                TEXT NOT NULL,
    amount_due              BIGINT NOT NULL,
    first_failed_at         TIMESTAMP NOT NULL, -- day 0 of the schedule
    attempt_count           INTEGER NOT NULL DEFAULT 0,
    next_payment_attempt    TIMESTAMP,          -- Stripe's next automatic retry
    last_failure_code       TEXT,
    last_failure_message    TEXT,
    card_brand              TEXT,
    card_last4              TEXT,
    next_step               INTEGER,            -- index into the schedule's steps; NULL when none is left
    next_step_at            TIMESTAMP,          -- the durable timer: NULL when nothing is due
    disrupt_at              TIMESTAMP,          -- fixed when the case enters disruption_scheduled
    last_event_created      BIGINT NOT NULL DEFAULT 0,
    opened_at               TIMESTAMP NOT NULL,
    closed_at               TIMESTAMP,
    recovered_amount        BIGINT,
    version                 INTEGER NOT NULL DEFAULT 0,  -- guarded updates: WHERE version = :seen
    updated_at              TIMESTAMP NOT NULL
);
CREATE INDEX IF NOT EXISTS cases_due ON cases (next_step_at) WHERE next_step_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS cases_customer ON cases (customer_id);
CREATE INDEX IF NOT EXISTS cases_account ON cases (account_id);
CREATE INDEX IF NOT EXISTS cases_state ON cases (state);

-- Every transition of every case: from, to, the fact that caused it.
CREATE TABLE IF NOT EXISTS case_transitions (
    id          TEXT PRIMARY KEY,
    case_id     TEXT NOT NULL,
    from_state  TEXT,                           -- NULL when the case opened
    to_state    TEXT NOT NULL,
    trigger     TEXT NOT NULL,
    event_id    TEXT,                           -- the Stripe event, or NULL for a timer
    step        INTEGER,                        -- the schedule step (timer), when a timer caused it
    at          TIMESTAMP NOT NULL
);
CREATE INDEX IF NOT EXISTS case_transitions_case ON case_transitions (case_id, at);

-- The email outbox: written in the transaction that decided to send, delivered once after commit.
CREATE TABLE IF NOT EXISTS emails (
    id                  TEXT PRIMARY KEY,       -- em_...
    dedupe_key          TEXT NOT NULL UNIQUE,   -- e.g. case:<id>:step:<n>; a second send is impossible
    template            TEXT NOT NULL,
    recipient           TEXT NOT NULL,
    subject             TEXT NOT NULL,
    body_text           TEXT NOT NULL,
    body_html           TEXT NOT NULL,
    case_id             TEXT,
    invoice_id          TEXT,
    customer_id         TEXT,
    status              TEXT NOT NULL DEFAULT 'pending',  -- pending | sending | sent | failed | cancelled
    attempts            INTEGER NOT NULL DEFAULT 0,
    last_error          TEXT,
    next_attempt_at     TIMESTAMP NOT NULL,
    lease_until         TIMESTAMP,
    provider_message_id TEXT,
    created_at          TIMESTAMP NOT NULL,
    sent_at             TIMESTAMP
);
CREATE INDEX IF NOT EXISTS emails_pending ON emails (status, next_attempt_at);
CREATE INDEX IF NOT EXISTS emails_case ON emails (case_id);

-- Signed notices to the platform (service.disruption_scheduled, ...), delivered in order per account.
CREATE TABLE IF NOT EXISTS platform_notices (
    id              TEXT PRIMARY KEY,           -- ntc_...: the notice id the platform dedupes on
    dedupe_key      TEXT NOT NULL UNIQUE,
    type            TEXT NOT NULL,
    account_id      TEXT NOT NULL,              -- ordering key: a subscription, else a customer
    seq             BIGINT NOT NULL,            -- order within the account
    body            TEXT NOT NULL,              -- the exact JSON sent on every try
    case_id         TEXT,
    invoice_id      TEXT,
    customer_id     TEXT,
    status          TEXT NOT NULL DEFAULT 'pending',  -- pending | sending | sent | failed
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    next_attempt_at TIMESTAMP NOT NULL,
    lease_until     TIMESTAMP,                  -- while sending: after this the sweeper may retry
    created_at      TIMESTAMP NOT NULL,
    delivered_at    TIMESTAMP
);
CREATE INDEX IF NOT EXISTS platform_notices_pending ON platform_notices (status, next_attempt_at);
CREATE INDEX IF NOT EXISTS platform_notices_account ON platform_notices (account_id, seq);

-- Service status per account (a subscription, else a customer) for the platform to poll.
CREATE TABLE IF NOT EXISTS accounts (
    id              TEXT PRIMARY KEY,           -- sub_... or cus_...
    customer_id     TEXT NOT NULL,
    subscription_id TEXT,
    status          TEXT NOT NULL DEFAULT 'active',   -- active | disruption_scheduled | disrupted
    disrupt_at      TIMESTAMP,
    disrupted_at    TIMESTAMP,
    notice_seq      BIGINT NOT NULL DEFAULT 0,  -- last seq handed to a platform notice
    updated_at      TIMESTAMP NOT NULL
);
CREATE INDEX IF NOT EXISTS accounts_customer ON accounts (customer_id);

-- Payment links asked for by support, and what Stripe made of them.
CREATE TABLE IF NOT EXISTS payment_links (
    id              TEXT PRIMARY KEY,           -- plr_...: the request id answered with 202
    invoice_id      TEXT NOT NULL,
    customer_id     TEXT NOT NULL,
    requested_by    TEXT,
    note            TEXT,
    requested_at    TIMESTAMP NOT NULL,
    status          TEXT NOT NULL DEFAULT 'requested',  -- requested | created | failed
    amount          BIGINT,
    currency        TEXT,
    methods         TEXT,                       -- JSON list of the payment method types offered
    stripe_id       TEXT,
    url             TEXT,
    expires_at      TIMESTAMP,
    last_error      TEXT,
    created_at      TIMESTAMP,
    enqueued_at     TIMESTAMP                   -- last time its job went to the broker (sweeper)
);
CREATE INDEX IF NOT EXISTS payment_links_invoice ON payment_links (invoice_id, requested_at);

-- Every card change we were told of: brand, last four, expiry, funding, fingerprint. Never more.
CREATE TABLE IF NOT EXISTS cards (
    id                  TEXT PRIMARY KEY,
    customer_id         TEXT NOT NULL,
    payment_method_id   TEXT NOT NULL,          -- pm_..., card_... or src_...
    brand               TEXT,
    last4               TEXT,
    exp_month           INTEGER,
    exp_year            INTEGER,
    funding             TEXT,
    fingerprint         TEXT,
    is_default          BOOLEAN NOT NULL DEFAULT FALSE,
    event_id            TEXT NOT NULL,
    event_type          TEXT NOT NULL,
    recorded_at         TIMESTAMP NOT NULL,
    UNIQUE (event_id, payment_method_id)
);
CREATE INDEX IF NOT EXISTS cards_customer ON cards (customer_id, recorded_at);
CREATE INDEX IF NOT EXISTS cards_expiry ON cards (exp_year, exp_month);

-- Immediate retries of a failed invoice after a new default card: one per (invoice, card).
CREATE TABLE IF NOT EXISTS card_retries (
    id                  TEXT PRIMARY KEY,
    dedupe_key          TEXT NOT NULL UNIQUE,   -- <invoice>:<payment method>
    invoice_id          TEXT NOT NULL,
    case_id             TEXT,
    customer_id         TEXT NOT NULL,
    payment_method_id   TEXT NOT NULL,
    status              TEXT NOT NULL DEFAULT 'pending',  -- pending | succeeded | declined | failed | skipped
    decline_code        TEXT,
    last_error          TEXT,
    created_at          TIMESTAMP NOT NULL,
    finished_at         TIMESTAMP,
    enqueued_at         TIMESTAMP               -- last time its job went to the broker (sweeper)
);

-- Resumable cursors of long jobs (events backfill).
CREATE TABLE IF NOT EXISTS cursors (
    name        TEXT PRIMARY KEY,
    value       TEXT,
    updated_at  TIMESTAMP NOT NULL
);
"""


def statements() -> list[str]:
    sql = re.sub(r"--[^\n]*", "", BASELINE_SQL)
    return [s.strip() for s in sql.split(";") if s.strip()]


def upgrade() -> None:
    for statement in statements():
        op.execute(statement)


def downgrade() -> None:
    for table in reversed(TABLES):
        op.execute(f"DROP TABLE IF EXISTS {table}")
