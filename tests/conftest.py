"""The suite's three tiers, and the fixtures every tier shares (registered here as plugins).

- tests/unit/: one process, nothing running outside it but the database: pure code, or the runtime
  on a SQLite file (or the test PostgreSQL database through `any_runtime`) with the stub broker and
  the in-thread HTTP fakes of tests/support. No broker server, no child process, no browser:
  tests/unit/conftest.py fails a test that asks for one.
- tests/integration/: still in the test process, against what the unit tier may not touch: real
  Redis, RabbitMQ or valkey brokers, PostgreSQL's own behaviour (statements, dumps, migrations),
  and short-lived commands (`dunning db upgrade`, promtool, pg_dump). Four files keep the `slow`
  variant of their catalogue over real HTTP beside it (front door, hostile inputs, OpenAPI, secrets
  in logs): it reuses the file's cases, and runs with the system tests (below).
- tests/system/: the service's real long-running processes (gunicorn web, worker pool, scheduler,
  `dunning run`, an installed wheel, localstripe), a browser, faults (kills, outages) and many hosts.
  Most are marked `slow` (`make test` leaves them out; `make test-all` and CI run them).

tests/support/ holds builders, drivers and the fakes of what lies outside our walls (one fake
HTTP server base for Stripe, SendGrid and the platform receivers); tests/fixtures/ the fixtures.

`make test` and `make test-all` run on two pytest-xdist workers (`--dist loadgroup`): the tests that
start the service's processes (tests/system/ and every `slow` test) form one group, run one at a
time on one worker, so their timings and kills never compete with each other; everything else is
spread over both workers. Nothing fails if the grouping stops working (pytest 9.2 broke it, hence
the pin in requirements-dev.in): tests/integration/test_suite_grouping.py checks it.
"""

from pathlib import Path

import pytest

SYSTEM = Path(__file__).parent / "system"

pytest_plugins = [
    "tests.fixtures.services",
    "tests.fixtures.runtime",
    "tests.fixtures.stripe",
]


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    one_at_a_time = pytest.mark.xdist_group("processes")
    for item in items:
        if item.path.is_relative_to(SYSTEM) or item.get_closest_marker("slow"):
            item.add_marker(one_at_a_time)
