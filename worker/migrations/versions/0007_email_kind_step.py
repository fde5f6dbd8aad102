"""Dedupe keys are built, never parsed: an email's kind and step, a card retry's expiry in columns.

Revision ID: 0007_email_kind_step
Revises: 0006_owner_locale
Create Date: 2026-12-03

- emails.kind (handlers/dedupe_keys.py EMAIL_KINDS) and emails.step (the schedule step's index,
  for kind "step"; an account email, kind "account-step", covers the steps email_steps lists):
  readers ask these instead of looking for ":step:" or "account:" in the key.
- card_retries.card_expiry (the tried card's <exp year-month> or "unknown"): with the payment
  method, the card's version, which decides whether a new card event is worth another charge.
Existing rows are filled in from their keys, whose text is unchanged (exactly once across the
upgrade): `case:<id>:step:<n>`, `account:<customer>:<template>:<invoice>@<step>,...`,
`case:<id>:payment-received`, `[case:<id>:]payment-link:<request>`,
`case:<id>:card-declined-again:...`, `{case|invoice}:<id>:action-required:<attempt>`,
`card-expiring:...`; a card retry's `<invoice>:<payment method>:<expiry>`. A key of no known shape
keeps NULL (no reader needs it).
"""
from alembic import op
import sqlalchemy as sa

revision = "0007_email_kind_step"
down_revision = "0006_owner_locale"
branch_labels = None
depends_on = None

# (kind, LIKE pattern of its keys), most specific first; each UPDATE touches rows still NULL only.
EMAIL_KINDS = (
    ("step", "case:%:step:%"),
    ("account-step", "account:%"),
    ("payment-received", "case:%:payment-received"),
    ("payment-link", "case:%:payment-link:%"),
    ("payment-link", "payment-link:%"),
    ("card-declined-again", "case:%:card-declined-again:%"),
    ("action-required", "case:%:action-required:%"),
    ("action-required", "invoice:%:action-required:%"),
    ("card-expiring", "card-expiring:%"),
)
COLUMNS = (
    ("emails", sa.Column("kind", sa.Text(), nullable=True)),
    ("emails", sa.Column("step", sa.Integer(), nullable=True)),
    ("card_retries", sa.Column("card_expiry", sa.Text(), nullable=True)),
)


def upgrade() -> None:
    for table, column in COLUMNS:
        op.add_column(table, column)
    bind = op.get_bind()
    for kind, pattern in EMAIL_KINDS:
        bind.execute(sa.text("UPDATE emails SET kind = :kind WHERE kind IS NULL AND dedupe_key LIKE :pattern"),
                     {"kind": kind, "pattern": pattern})
    if bind.dialect.name == "sqlite":
        step = "CAST(substr(dedupe_key, instr(dedupe_key, ':step:') + 6) AS INTEGER)"
        rest = "substr(dedupe_key, instr(dedupe_key, ':') + 1)"  # <payment method>:<expiry>
        expiry = f"substr({rest}, instr({rest}, ':') + 1)"
    else:
        step = "CAST(split_part(dedupe_key, ':step:', 2) AS INTEGER)"
        expiry = "split_part(dedupe_key, ':', 3)"
    bind.execute(sa.text(f"UPDATE emails SET step = {step} WHERE kind = 'step'"))
    bind.execute(sa.text(f"UPDATE card_retries SET card_expiry = {expiry} "
                         "WHERE dedupe_key LIKE '%:%:%' AND dedupe_key NOT LIKE '%:%:%:%'"))


def downgrade() -> None:
    for table, column in reversed(COLUMNS):
        with op.batch_alter_table(table) as batch:
            batch.drop_column(column.name)
