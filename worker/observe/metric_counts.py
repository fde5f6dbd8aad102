"""Domain counts kept as the work happens, so /metrics reads a few rows whatever the tables hold.

Every write to a counted table moves `metric_counts` in the same statement, through database
triggers made from FAMILIES below: the counts commit or roll back with the work itself. A crash,
a duplicate delivery (ON CONFLICT DO NOTHING inserts nothing, so counts nothing), a retry, a
replay, a retention prune, an erasure, an operator's SQL or a bulk load cannot skew them, and no
code path can forget to count. A family counts rows per label set, exactly what
`SELECT labels, count(*) FROM table WHERE ... GROUP BY labels` gives: `expected_counts` is that
query (the migration fills the table with it; the tests compare both after real work).

PostgreSQL: statement-level triggers over transition tables, so a statement moving 1,000 rows
makes one upsert per label set (never 1,000 updates of one counter row in a transaction), and an
UPDATE that changes no counted column writes nothing. Rows are sharded by backend
(mod(pg_backend_pid(), SHARDS)): concurrent transactions do not queue on one hot counter row; the
reader sums the shards. SQLite has one writer: row-level triggers, one shard.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, text

SHARDS = 64
LABEL_COLUMNS = ("label1", "label2", "label3", "label4")
OPENED_HOUR = "cases_opened_hour"


@dataclass(frozen=True)
class Hour:
    """A label that is the UTC hour of a timestamp column, 'YYYY-MM-DD HH' (sorts as time)."""
    column: str

    def sql(self, row: str, dialect: str) -> str:
        if dialect == "sqlite":
            return f"strftime('%Y-%m-%d %H', {row}.{self.column})"
        return f"to_char({row}.{self.column}, 'YYYY-MM-DD HH24')"


@dataclass(frozen=True)
class Family:
    """Rows of `table` matching `where`, counted (and `total` summed) per label set."""
    name: str
    table: str
    labels: tuple  # SQL text expressions over the row `{r}` (or Hour), at most four
    columns: tuple[str, ...]  # every column read: an UPDATE of other columns moves nothing
    where: str = "TRUE"
    total: str = "0"

    def label_sql(self, row: str, dialect: str) -> list[str]:
        made = [label.sql(row, dialect) if isinstance(label, Hour) else label.format(r=row) for label in self.labels]
        return made + ["''"] * (len(LABEL_COLUMNS) - len(made))


FAMILIES = (
    Family("events", "events", ("{r}.type", "{r}.source", "{r}.status",
                                "CASE WHEN {r}.processed_at IS NULL THEN '0' ELSE '1' END"),
           ("type", "source", "status", "processed_at")),
    Family("cases", "cases", ("{r}.state", "CASE WHEN {r}.owner_unreachable = 1 THEN '1' ELSE '0' END"),
           ("state", "owner_unreachable")),
    Family("cases_recovered", "cases", ("{r}.currency",), ("state", "currency", "recovered_amount", "amount_due"),
           where="{r}.state = 'recovered'", total="COALESCE({r}.recovered_amount, {r}.amount_due)"),
    # The 30-day recovery figures: cases per opening hour, and whether they are recovered now.
    Family(OPENED_HOUR, "cases", (Hour("opened_at"), "CASE WHEN {r}.state = 'recovered' THEN '1' ELSE '0' END"),
           ("opened_at", "state")),
    Family("case_transitions", "case_transitions",
           ("COALESCE({r}.from_state, '')", "{r}.to_state", "{r}.\"trigger\""), ("from_state", "to_state", "trigger")),
    Family("emails", "emails", ("{r}.template", "{r}.status"), ("template", "status")),
    Family("platform_notices", "platform_notices", ("{r}.type", "{r}.status"), ("type", "status")),
    Family("payment_links", "payment_links", ("{r}.status", "COALESCE({r}.currency, '')"), ("status", "currency")),
    Family("card_retries", "card_retries", ("{r}.status",), ("status",)),
)
TABLES = tuple(dict.fromkeys(f.table for f in FAMILIES))


def _families_of(table: str) -> list[Family]:
    return [f for f in FAMILIES if f.table == table]


def _dialect(conn) -> str:
    return "sqlite" if conn.dialect.name == "sqlite" else "postgresql"


# -- what the counts must be: the tables grouped (the migration's fill, the tests' oracle) ---------
def _rows_sql(family: Family, source: str, row: str, sign: int, dialect: str) -> str:
    """One delta row per row of `source` that the family counts: its labels, +-1, +-total."""
    labels = ", ".join(f"{sql} AS {name}" for sql, name in zip(family.label_sql(row, dialect), LABEL_COLUMNS))
    total = family.total.format(r=row)
    return (f"SELECT '{family.name}' AS family, {labels}, {sign} AS n, {sign} * ({total}) AS total "
            f"FROM {source} AS {row} WHERE {family.where.format(r=row)}")


def expected_counts(conn) -> dict[tuple, tuple[int, int]]:
    """{(family, label1..label4): (count, total)} from the tables themselves (a full scan: never
    on a scrape; the migration and the tests use it)."""
    dialect = _dialect(conn)
    union = " UNION ALL ".join(_rows_sql(f, f.table, "r", 1, dialect) for f in FAMILIES)
    columns = ", ".join(LABEL_COLUMNS)
    rows = conn.execute(text(f"SELECT family, {columns}, sum(n), sum(total) FROM ({union}) AS d "
                             f"GROUP BY family, {columns}"))
    return {tuple(r[:5]): (int(r[5]), int(r[6])) for r in rows}


def stored_counts(conn) -> dict[tuple, tuple[int, int]]:
    """{(family, label1..label4): (count, total)} as metric_counts holds them (shards summed, zeros left out)."""
    columns = ", ".join(LABEL_COLUMNS)
    rows = conn.execute(text(f"SELECT family, {columns}, sum(n), sum(total) FROM metric_counts "
                             f"GROUP BY family, {columns} HAVING sum(n) <> 0 OR sum(total) <> 0"))
    return {tuple(r[:5]): (int(r[5]), int(r[6])) for r in rows}


def recount(conn) -> None:
    """Replace the counts with the tables' own (after the migration adds the triggers; a repair)."""
    conn.execute(text("DELETE FROM metric_counts"))
    for (family, *labels), (n, total) in expected_counts(conn).items():
        conn.execute(text("INSERT INTO metric_counts (family, label1, label2, label3, label4, shard, n, total) "
                          "VALUES (:family, :l1, :l2, :l3, :l4, 0, :n, :total)"),
                     {"family": family, "l1": labels[0], "l2": labels[1], "l3": labels[2], "l4": labels[3],
                      "n": n, "total": total})


# -- reading them: what a scrape costs ---------------------------------------------------------------
class Counts:
    """The summed counts of one read, by family: `rows(name)` -> [(labels, count, total)]."""

    def __init__(self, rows: dict[tuple, tuple[int, int]]):
        self._by_family: dict[str, list[tuple[tuple, int, int]]] = {}
        arity = {f.name: len(f.labels) for f in FAMILIES}
        for (family, *labels), (n, total) in sorted(rows.items()):
            self._by_family.setdefault(family, []).append((tuple(labels[:arity.get(family, 4)]), n, total))

    def rows(self, family: str) -> list[tuple[tuple, int, int]]:
        return self._by_family.get(family, [])


def read(conn, opened_since: datetime) -> Counts:
    """Every family's counts, and the opening hours from `opened_since`'s hour on: one query over
    metric_counts by its primary key (label sets x shards, whatever the counted tables hold; the
    older opening hours are not read)."""
    columns = ", ".join(LABEL_COLUMNS)
    others = [f.name for f in FAMILIES if f.name != OPENED_HOUR]
    rows = conn.execute(text(
        f"SELECT family, {columns}, sum(n), sum(total) FROM metric_counts "
        f"WHERE family IN :others OR (family = :hours AND label1 >= :since) "
        f"GROUP BY family, {columns} HAVING sum(n) <> 0 OR sum(total) <> 0")
        .bindparams(bindparam("others", expanding=True)),
        {"others": others, "hours": OPENED_HOUR, "since": opened_since.strftime("%Y-%m-%d %H")})
    return Counts({tuple(r[:5]): (int(r[5]), int(r[6])) for r in rows})


# -- the triggers ---------------------------------------------------------------------------------
UPSERT_TAIL = ("ON CONFLICT (family, label1, label2, label3, label4, shard) DO UPDATE "
               "SET n = metric_counts.n + excluded.n, total = metric_counts.total + excluded.total")
INSERT_HEAD = "INSERT INTO metric_counts (family, label1, label2, label3, label4, shard, n, total) "


def _pg_upsert(table: str, sources: list[tuple[str, int]]) -> str:
    """One statement: the deltas of every family of `table` over the transition tables, summed
    per label set (an unchanged label set nets to zero and is not written), written in label
    order so two transactions on one shard lock the rows they share in the same order."""
    deltas = " UNION ALL ".join(_rows_sql(f, source, "r", sign, "postgresql")
                                for source, sign in sources for f in _families_of(table))
    columns = ", ".join(LABEL_COLUMNS)
    return (f"{INSERT_HEAD}SELECT family, {columns}, mod(pg_backend_pid(), {SHARDS}), sum(n), sum(total) "
            f"FROM ({deltas}) AS d GROUP BY family, {columns} HAVING sum(n) <> 0 OR sum(total) <> 0 "
            f"ORDER BY family, {columns} {UPSERT_TAIL};")


def postgres_statements(table: str) -> list[str]:
    """The trigger function of `table` and its INSERT, UPDATE and DELETE statement triggers."""
    function = f"metric_counts_{table}"
    body = (f"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $fn$\n"
            f"BEGIN\n"
            f"  IF TG_OP = 'INSERT' THEN\n    {_pg_upsert(table, [('new_rows', 1)])}\n"
            f"  ELSIF TG_OP = 'UPDATE' THEN\n    {_pg_upsert(table, [('old_rows', -1), ('new_rows', 1)])}\n"
            f"  ELSE\n    {_pg_upsert(table, [('old_rows', -1)])}\n"
            f"  END IF;\n  RETURN NULL;\nEND\n$fn$")
    referencing = {"insert": "NEW TABLE AS new_rows", "update": "OLD TABLE AS old_rows NEW TABLE AS new_rows",
                   "delete": "OLD TABLE AS old_rows"}
    return [body] + [f"CREATE TRIGGER {function}_{op} AFTER {op.upper()} ON {table} REFERENCING {ref} "
                     f"FOR EACH STATEMENT EXECUTE FUNCTION {function}()" for op, ref in referencing.items()]


def _sqlite_upserts(table: str, row: str, sign: int) -> str:
    parts = []
    for family in _families_of(table):
        labels = ", ".join(family.label_sql(row, "sqlite"))
        parts.append(f"{INSERT_HEAD}SELECT '{family.name}', {labels}, 0, {sign}, {sign} * ({family.total.format(r=row)}) "
                     f"WHERE {family.where.format(r=row)} {UPSERT_TAIL};")
    return "\n  ".join(parts)


def sqlite_statements(table: str) -> list[str]:
    """Row-level INSERT, UPDATE (only when a counted column changed) and DELETE triggers."""
    name = f"metric_counts_{table}"
    columns = sorted({c for f in _families_of(table) for c in f.columns})
    changed = " OR ".join(f'OLD."{c}" IS NOT NEW."{c}"' for c in columns)
    quoted = ", ".join(f'"{c}"' for c in columns)
    return [
        f"CREATE TRIGGER {name}_insert AFTER INSERT ON {table} FOR EACH ROW BEGIN\n"
        f"  {_sqlite_upserts(table, 'NEW', 1)}\nEND",
        f"CREATE TRIGGER {name}_update AFTER UPDATE OF {quoted} ON {table} FOR EACH ROW WHEN {changed} BEGIN\n"
        f"  {_sqlite_upserts(table, 'OLD', -1)}\n  {_sqlite_upserts(table, 'NEW', 1)}\nEND",
        f"CREATE TRIGGER {name}_delete AFTER DELETE ON {table} FOR EACH ROW BEGIN\n"
        f"  {_sqlite_upserts(table, 'OLD', -1)}\nEND",
    ]


def trigger_names() -> list[str]:
    return [f"metric_counts_{table}_{op}" for table in TABLES for op in ("insert", "update", "delete")]


def install_triggers(conn) -> None:
    """Create (or replace) the counting triggers; idempotent. PostgreSQL keeps triggers that
    exist (their functions are replaced), so a second `init_schema` takes no table lock."""
    if _dialect(conn) == "sqlite":
        for name in trigger_names():
            conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {name}")
        for table in TABLES:
            for statement in sqlite_statements(table):
                conn.exec_driver_sql(statement)
        return
    present = {r[0] for r in conn.execute(text("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal "
                                               "AND tgname LIKE 'metric_counts_%'"))}
    for table in TABLES:
        function, *triggers = postgres_statements(table)
        conn.exec_driver_sql(function)
        for statement in triggers:
            if statement.split()[2] not in present:
                conn.exec_driver_sql(statement)


def drop_triggers(conn) -> None:
    """Remove the triggers and their functions (the migration's downgrade)."""
    sqlite = _dialect(conn) == "sqlite"
    for table in TABLES:
        for op in ("insert", "update", "delete"):
            name = f"metric_counts_{table}_{op}"
            conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {name}" + ("" if sqlite else f" ON {table}"))
        if not sqlite:
            conn.exec_driver_sql(f"DROP FUNCTION IF EXISTS metric_counts_{table}()")
