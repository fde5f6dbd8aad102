"""Statements stay prepared on PostgreSQL: no work on the hot path ends its use of a connection by
rolling back an open transaction.

psycopg answers any ROLLBACK by discarding every statement prepared on the connection (and sends
DEALLOCATE ALL); it prepares a statement again only after five more runs on that connection. A read
in a plain `engine.connect()` block ends with the pool's ROLLBACK, so one such read per event or
step (the event's SELECT when a Stripe key is set, a card retry's loads, a due case's peek) kept
the hot path's statements from ever staying prepared: in the e2e benchmark about half of the
statements were parsed and planned anew (issue 17). Reads go through `Database.reading()`, the
web's too (/readyz, /metrics, the platform API, even its 404s, the console).
"""

from __future__ import annotations

import re
import traceback

from sqlalchemy import event
from psycopg.pq import TransactionStatus

from config.settings import PROJECT_ROOT
from tests.support import card_events as fc
from tests.support.dunning import DAY, T0, case_of, deliver, open_case, paid, tick
from tests.support.fake_stripe import API_KEY
from tests.support.helpers import admin_client, bearer, drain, post_event


def _watch_rollbacks(engine) -> list[str]:
    """Where a ROLLBACK of an open transaction was sent (the stack of our code that caused it)."""
    seen: list[str] = []

    def record():
        frames = [f for f in traceback.extract_stack()[:-2] if "/sqlalchemy/" not in f.filename]
        seen.append(" <- ".join(f"{f.filename.rsplit('/', 2)[-2]}/{f.filename.rsplit('/', 1)[-1]}:{f.lineno}"
                                for f in reversed(frames[-6:])))

    @event.listens_for(engine, "rollback")
    def on_rollback(conn):
        if conn.connection.dbapi_connection.info.transaction_status == TransactionStatus.INTRANS:
            record()

    @event.listens_for(engine.pool, "reset")
    def on_reset(dbapi_connection, _record, state):
        if not state.transaction_was_reset and \
                dbapi_connection.info.transaction_status == TransactionStatus.INTRANS:
            record()

    return seen


PLATFORM_TOKEN = "platform-api-token-for-prepared-statements-0123"


def test_events_steps_card_retries_and_reads_never_roll_back_a_connection(make_runtime, fake_stripe):
    runtime = make_runtime(db="postgres", STRIPE_API_KEY=API_KEY, STRIPE_API_BASE=fake_stripe.base_url,
                           PLATFORM_API_TOKEN=PLATFORM_TOKEN)
    fake_stripe.add_subscription("sub_owner", "cus_owner", default_payment_method="pm_old")
    fake_stripe.add_card("pm_old", "cus_owner", last4="0341", declines=True)
    fake_stripe.add_card("pm_new", "cus_owner", brand="mastercard", last4="5555", exp_month=8, exp_year=2031,
                         declines=True)
    fake_stripe.add_customer("cus_owner", default_payment_method="pm_new")
    client = admin_client(runtime)
    rollbacks = _watch_rollbacks(runtime.db.engine)

    open_case(runtime, fake_stripe, "in_dun", amount=12000)  # the event's read, with a Stripe key
    for evt in (fc.pm_attached("pm_new", "cus_owner", brand="mastercard", last4="5555", exp=(8, 2031),
                               created=T0 + DAY),
                fc.customer_updated("cus_owner", default_pm="pm_new", previous_default="pm_old",
                                    created=T0 + DAY + 1)):
        assert post_event(client, evt).status_code == 200
    drain(runtime)  # a card retry (declined): its loads, its email
    assert tick(runtime, T0 + 3 * DAY) >= 1  # a due step: the case peeked before it runs
    drain(runtime)
    assert client.simulate_get("/metrics").status_code == 200
    assert client.simulate_get("/readyz").status_code == 200
    platform = {"Authorization": f"Bearer {PLATFORM_TOKEN}"}
    for path, status in (("/platform/accounts", 200), ("/platform/accounts/sub_owner", 200),
                         ("/platform/accounts/sub_owner/notices", 200), ("/platform/accounts/sub_nobody", 404)):
        assert client.simulate_get(path, headers=platform).status_code == status, path
    for path in ("/console/cases", "/console/cases?q=in_dun", "/console/cases/in_dun"):
        assert client.simulate_get(path, headers=bearer()).status_code == 200, path
    fake_stripe.invoices["in_dun"]["status"] = "paid"
    assert deliver(runtime, paid("in_dun", customer="cus_owner", amount=12000, created=T0 + 4 * DAY)) == "processed"
    drain(runtime)

    assert case_of(runtime, "in_dun")["state"] == "recovered"
    assert rollbacks == [], "\n".join(rollbacks)


def test_reads_go_through_database_reading_not_a_plain_connect():
    """A plain `engine.connect()` block ends in the pool's ROLLBACK: only Database itself opens
    connections (`reading()`, `transaction()`, `autocommit_connection()` for the advisory locks)."""
    plain = re.compile(r"engine\.connect\(")
    found = [f"{path.relative_to(PROJECT_ROOT)}:{number}"
             for folder in ("worker", "handlers") for path in sorted((PROJECT_ROOT / folder).rglob("*.py"))
             if path != PROJECT_ROOT / "worker" / "infra" / "db.py"
             for number, line in enumerate(path.read_text().splitlines(), 1) if plain.search(line)]
    assert found == [], "read with Database.reading() instead:\n" + "\n".join(found)
