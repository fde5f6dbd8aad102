"""Migrations: every revision, applied to an empty database or to one with data in it, ends at
exactly the schema schema.sql defines, on SQLite and on PostgreSQL.

The comparison is of what the database itself reports (tables, columns with type, nullability
and default, primary keys, indexes with their WHERE, unique constraints, foreign keys): a column
or index added to schema.sql without a revision, or a revision that schema.sql does not mirror,
fails here and names the difference.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from datetime import datetime

import pytest
from sqlalchemy import MetaData, create_engine, inspect, select, text

from tests.support.services import TEST_DATABASE_URL, postgres_reachable, skip_or_fail
from worker.infra import migrate
from worker.infra.db import Database

BASELINE_MODULE = migrate.MIGRATIONS_DIR / "versions" / "0001_baseline.py"


@pytest.fixture
def fresh_url(tmp_path):
    """make() -> the URL of a new, empty database of the given kind (dropped afterwards)."""
    made: list[str] = []
    admin = None

    def make(kind: str) -> str:
        nonlocal admin
        if kind == "sqlite":
            return f"sqlite:///{tmp_path / f'{uuid.uuid4().hex[:8]}.sqlite3'}"
        if not postgres_reachable():
            skip_or_fail(f"PostgreSQL at {TEST_DATABASE_URL}")
        admin_url = TEST_DATABASE_URL.replace("postgresql://", "postgresql+psycopg://")
        admin = admin or create_engine(admin_url, isolation_level="AUTOCOMMIT")
        name = f"dunning_migr_{uuid.uuid4().hex[:12]}"
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        made.append(name)
        return f"{admin_url.rsplit('/', 1)[0]}/{name}"

    yield make
    if admin is not None:
        with admin.connect() as conn:
            for name in made:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def describe(db: Database) -> dict:
    """The schema as the database reports it, in a form two databases can be compared by."""
    inspector = inspect(db.engine)
    shape = {}
    for table in sorted(set(inspector.get_table_names()) - {"alembic_version"}):
        shape[table] = {
            "columns": sorted((c["name"], str(c["type"]), c["nullable"], str(c.get("default")))
                              for c in inspector.get_columns(table)),
            "primary_key": sorted(inspector.get_pk_constraint(table)["constrained_columns"]),
            "indexes": sorted((i["name"], tuple(i["column_names"]), bool(i["unique"]),
                               repr(sorted((k, str(v)) for k, v in i.get("dialect_options", {}).items())))
                              for i in inspector.get_indexes(table)),
            "unique": sorted(tuple(u["column_names"]) for u in inspector.get_unique_constraints(table)),
            "foreign_keys": sorted((tuple(f["constrained_columns"]), f["referred_table"],
                                    tuple(f["referred_columns"])) for f in inspector.get_foreign_keys(table)),
            "triggers": triggers_of(db, table),
        }
    return shape


def triggers_of(db: Database, table: str) -> list[str]:
    """The names of a table's own triggers (the metric counts' are made from Python, not schema.sql)."""
    query = ("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = :t" if db.is_sqlite else
             "SELECT tgname FROM pg_trigger JOIN pg_class ON pg_class.oid = tgrelid "
             "WHERE NOT tgisinternal AND relname = :t")
    with db.engine.connect() as conn:
        return sorted(r[0] for r in conn.execute(text(query), {"t": table}))


def differences(expected: dict, got: dict) -> list[str]:
    """Readable lines for what the migrated database lacks or has beyond schema.sql."""
    lines = [f"table {t}: in schema.sql, no revision creates it" for t in expected.keys() - got.keys()]
    lines += [f"table {t}: made by a revision, absent from schema.sql" for t in got.keys() - expected.keys()]
    for table in sorted(expected.keys() & got.keys()):
        for part, want in expected[table].items():
            have = got[table][part]
            for item in sorted(set(map(repr, want)) - set(map(repr, have))):
                lines.append(f"{table}.{part}: schema.sql has {item}, the revisions do not")
            for item in sorted(set(map(repr, have)) - set(map(repr, want))):
                lines.append(f"{table}.{part}: the revisions make {item}, schema.sql does not")
    return lines


def schema_sql_shape(url: str) -> dict:
    db = Database(url)
    db.init_schema()
    try:
        return describe(db)
    finally:
        db.dispose()


def fill_every_table(db: Database) -> dict[str, int]:
    """One row in each table, every NOT NULL column without a default given a value of its type."""
    metadata = MetaData()
    metadata.reflect(db.engine)
    counts = {}
    with db.transaction() as conn:
        for name, table in metadata.tables.items():
            if name == "alembic_version":
                continue
            row = {}
            for column in table.columns:
                if column.nullable and not column.primary_key:
                    continue
                kind = str(column.type).upper()
                if "INT" in kind:
                    row[column.name] = 7
                elif "BOOL" in kind:
                    row[column.name] = False
                elif "TIME" in kind:
                    row[column.name] = datetime(2026, 11, 1, 12, 0, 0)
                else:
                    row[column.name] = f"{name}-{column.name}"
            conn.execute(table.insert().values(row))
            counts[name] = 1
    return counts


def baseline_statements() -> list[str]:
    """The frozen SQL of the baseline revision, as the old `db init` applied it."""
    namespace: dict = {}
    exec(compile(BASELINE_MODULE.read_text().replace("from alembic import op", ""), str(BASELINE_MODULE), "exec"),
         namespace)
    return namespace["statements"]()


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_every_revision_from_an_empty_database_gives_the_schema_of_schema_sql(kind, fresh_url):
    expected = schema_sql_shape(fresh_url(kind))
    db = Database(fresh_url(kind))
    before, after = migrate.upgrade(db)
    assert before is None and after == migrate.head_revisions()[0]
    problems = differences(expected, describe(db))
    db.dispose()
    assert not problems, "schema.sql and worker/migrations disagree (add a revision, see README):\n" + \
        "\n".join(problems)


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_database_at_the_baseline_with_data_upgrades_to_schema_sql_and_keeps_its_rows(kind, fresh_url):
    expected = schema_sql_shape(fresh_url(kind))
    db = Database(fresh_url(kind))
    migrate.upgrade(db, migrate.BASELINE)
    assert migrate.current_revision(db) == migrate.BASELINE
    counts = fill_every_table(db)
    migrate.upgrade(db)
    assert migrate.current_revision(db) == migrate.head_revisions()[0]
    assert not differences(expected, describe(db))
    with db.engine.connect() as conn:
        for table, count in counts.items():
            assert conn.execute(select(text("count(*)")).select_from(text(table))).scalar() == count
        # The rows written before the counting triggers existed are counted by the revision.
        from worker.observe import metric_counts
        assert metric_counts.stored_counts(conn) == metric_counts.expected_counts(conn) != {}
    db.dispose()


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_database_made_by_the_old_db_init_is_adopted_and_upgraded_with_its_rows(kind, fresh_url):
    expected = schema_sql_shape(fresh_url(kind))
    db = Database(fresh_url(kind))
    with db.transaction() as conn:
        for statement in baseline_statements():
            conn.exec_driver_sql(statement)
    db._tables = None
    counts = fill_every_table(db)
    assert migrate.current_revision(db) is None
    before, after = migrate.upgrade(db)
    assert (before, after) == (None, migrate.head_revisions()[0])
    assert not differences(expected, describe(db))
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM events")).scalar() == counts["events"]
    db.dispose()


def test_the_revisions_have_one_head_so_every_host_agrees_on_the_newest_schema():
    assert len(migrate.head_revisions()) == 1


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_upgrading_twice_and_downgrading_to_nothing_both_work(kind, fresh_url):
    db = Database(fresh_url(kind))
    head = migrate.head_revisions()[0]
    migrate.upgrade(db)
    assert migrate.upgrade(db) == (head, head)  # nothing left to do, no error
    migrate.downgrade(db, "base")
    assert set(inspect(db.engine).get_table_names()) <= {"alembic_version"}
    db.dispose()


def test_two_hosts_upgrading_one_postgresql_at_once_both_succeed_and_record_it_once(fresh_url, tmp_path):
    """Two release phases at once (two processes, as two hosts): the advisory lock serializes them."""
    from tests.support.services import base_env
    from tests.support.processes import DUNNING
    env = {**os.environ, **base_env(tmp_path), "DATABASE_URL": fresh_url("postgres")}
    deploys = [subprocess.Popen([DUNNING, "db", "upgrade"], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outcomes = [(p.wait(60), p.stderr.read()) for p in deploys]
    assert [code for code, _ in outcomes] == [0, 0], outcomes
    db = Database(env["DATABASE_URL"])
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == \
            migrate.head_revisions()
    db.dispose()


def test_a_column_in_schema_sql_without_a_revision_is_reported_by_name(tmp_path):
    """The guard itself: a schema.sql with one more column differs, and the message names it."""
    url_sql, url_migrated = (f"sqlite:///{tmp_path / n}" for n in ("a.sqlite3", "b.sqlite3"))
    expected_db = Database(url_sql)
    expected_db.init_schema()
    with expected_db.transaction() as conn:
        conn.exec_driver_sql("ALTER TABLE cases ADD COLUMN a_column_no_revision_makes BOOLEAN")
    migrated = Database(url_migrated)
    migrate.upgrade(migrated)
    problems = differences(describe(expected_db), describe(migrated))
    assert problems == ["cases.columns: schema.sql has ('a_column_no_revision_makes', 'BOOLEAN', True, 'None'), "
                        "the revisions do not"]


def test_db_upgrade_and_its_alias_db_init_migrate_from_the_command_line(tmp_path):
    from tests.support.services import base_env
    from tests.support.processes import DUNNING
    env = {**os.environ, **base_env(tmp_path)}
    first = subprocess.run([DUNNING, "db", "upgrade"], env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    head = migrate.head_revisions()[0]
    assert first.stdout.strip().endswith(f"unversioned -> {head}")
    again = subprocess.run([DUNNING, "db", "init"], env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().endswith(f"{head} -> {head}")
    current = subprocess.run([DUNNING, "db", "current"], env=env, capture_output=True, text=True, timeout=60)
    assert current.stdout.strip() == f"database {head}; head {head}"


def test_the_procfile_migrates_in_its_release_phase_and_make_run_does_not_keep_that_running():
    from config.settings import PROJECT_ROOT
    from worker.cli.launcher import procfile_entries
    assert "release: dunning db upgrade" in (PROJECT_ROOT / "Procfile").read_text().splitlines()
    assert set(procfile_entries()) == {"web", "worker", "scheduler"}


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_an_upgrade_puts_back_a_counting_trigger_a_revision_lost(kind, fresh_url):
    """On SQLite a batch ALTER copies the table and drops its triggers: every upgrade reinstalls them."""
    from worker.observe import metric_counts
    db = Database(fresh_url(kind))
    migrate.upgrade(db)
    with db.transaction() as conn:
        conn.exec_driver_sql("DROP TRIGGER metric_counts_cases_update" + ("" if db.is_sqlite else " ON cases"))
    assert "metric_counts_cases_update" not in triggers_of(db, "cases")
    migrate.upgrade(db)  # nothing to migrate: the triggers are checked all the same
    assert triggers_of(db, "cases") == sorted(n for n in metric_counts.trigger_names() if "_cases_" in n)
    db.dispose()


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_emails_and_card_retries_written_before_0007_get_their_kind_step_and_expiry_from_their_keys(kind, fresh_url):
    """The keys keep their text (exactly once across the upgrade); the new columns are filled from it."""
    db = Database(fresh_url(kind))
    migrate.upgrade(db, "0006_owner_locale")
    now = datetime(2026, 11, 1, 12, 0, 0)
    keys = {"case:dc_1:step:3": ("step", 3), "account:cus_1:reminder:in_1@1,in_2@1": ("account-step", None),
            "case:dc_1:payment-received": ("payment-received", None),
            "case:dc_1:payment-link:plr_1": ("payment-link", None), "payment-link:plr_2": ("payment-link", None),
            "case:dc_1:card-declined-again:pm_1:2031-08": ("card-declined-again", None),
            "case:dc_1:action-required:2": ("action-required", None),
            "invoice:in_1:action-required:evt_1": ("action-required", None),
            "card-expiring:cus_1:fp_1:2026-12": ("card-expiring", None), "k1": (None, None)}
    with db.engine.begin() as conn:
        for n, key in enumerate(keys):
            conn.execute(text("INSERT INTO emails (id, dedupe_key, template, recipient, subject, body_text, "
                              "body_html, next_attempt_at, created_at) VALUES (:id, :key, 'reminder', 'a@example.com',"
                              " 's', 't', 'h', :now, :now)"), {"id": f"em_{n}", "key": key, "now": now})
        for n, key in enumerate(("in_1:pm_1:2031-08", "in_1:pm_2:unknown", "in_2:pm_1")):
            conn.execute(text("INSERT INTO card_retries (id, dedupe_key, invoice_id, customer_id, payment_method_id,"
                              " created_at) VALUES (:id, :key, 'in_1', 'cus_1', 'pm_1', :now)"),
                         {"id": f"cr_{n}", "key": key, "now": now})
    migrate.upgrade(db)
    with db.engine.connect() as conn:
        got = {r.dedupe_key: (r.kind, r.step) for r in conn.execute(text("SELECT dedupe_key, kind, step FROM emails"))}
        expiries = dict(conn.execute(text("SELECT dedupe_key, card_expiry FROM card_retries")).all())
    db.dispose()
    assert got == keys
    assert expiries == {"in_1:pm_1:2031-08": "2031-08", "in_1:pm_2:unknown": "unknown", "in_2:pm_1": None}


def test_the_dedupe_keys_of_existing_kinds_keep_their_text():
    """Rows written before an upgrade must block the same send after it."""
    from handlers import dedupe_keys as k
    card = {"fingerprint": "fp_1", "payment_method_id": "pm_1", "exp_year": 2026, "exp_month": 12}
    assert [k.step_email("dc_1", 3).value, k.payment_received("dc_1").value, k.payment_link("plr_1", "dc_1").value,
            k.payment_link("plr_2").value, k.card_declined_again("dc_1", "pm_1", "2031-08").value,
            k.action_required(2, case_id="dc_1").value, k.action_required("evt_1", invoice_id="in_1").value,
            k.card_expiring("cus_1", card).value, k.notice("sub_1", "service.disrupted", "dc_1"),
            k.card_retry("in_1", "pm_1", "2031-08")] == [
        "case:dc_1:step:3", "case:dc_1:payment-received", "case:dc_1:payment-link:plr_1", "payment-link:plr_2",
        "case:dc_1:card-declined-again:pm_1:2031-08", "case:dc_1:action-required:2",
        "invoice:in_1:action-required:evt_1", "card-expiring:cus_1:fp_1:2026-12",
        "notice:sub_1:service.disrupted:dc_1", "in_1:pm_1:2031-08"]
    # issue 14's: a step's claim (email_steps) is its lone email's key; an account email's names its steps
    assert k.email_step("dc_1", 3) == k.step_email("dc_1", 3).value
    account = k.account_step_email("cus_1", "reminder", [("in_2", 1), ("in_1", 1)])
    assert (account.value, account.kind, account.step) == ("account:cus_1:reminder:in_1@1,in_2@1", "account-step", None)
