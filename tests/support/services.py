"""The real services the suite runs against: their URLs, reachability probes, and a base environment.

PostgreSQL, Redis and RabbitMQ are real (see the developers' guide); only Stripe and SendGrid are
faked. Where a service is down a test skips, except on CI (CI=true or REQUIRE_SERVICES=1) where it
fails: a green CI never hides a missing service.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Callable

import pytest
from sqlalchemy import create_engine, text

from config.settings import PROJECT_ROOT
from tests.support.helpers import ADMIN_TOKEN, WEBHOOK_SECRET

TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
TEST_RABBITMQ_URL = os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672")
REQUIRE_SERVICES = os.environ.get("CI") == "true" or os.environ.get("REQUIRE_SERVICES") == "1"


def postgres_reachable() -> bool:
    try:
        engine = create_engine(TEST_DATABASE_URL.replace("postgresql://", "postgresql+psycopg://"),
                               connect_args={"connect_timeout": 2})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return True
    except Exception:
        return False


def redis_reachable() -> bool:
    import redis
    try:
        redis.Redis.from_url(TEST_REDIS_URL, socket_connect_timeout=2).ping()
        return True
    except Exception:
        return False


def rabbitmq_reachable() -> bool:
    import socket
    from urllib.parse import urlparse
    parsed = urlparse(TEST_RABBITMQ_URL)
    try:
        socket.create_connection((parsed.hostname, parsed.port or 5672), timeout=2).close()
        return True
    except OSError:
        return False


def skip_or_fail(what: str):
    if REQUIRE_SERVICES:
        pytest.fail(f"{what} is required on CI but is not reachable")
    pytest.skip(f"{what} is not reachable")


def rabbitmq_vhost() -> tuple[str, Callable[[], None]]:
    """A fresh virtual host on the local RabbitMQ (its namespace, as QUEUE_NAMESPACE is Redis's):
    (its amqp URL, a function that deletes it). Made with rabbitmqctl, so the server must be local."""
    import shutil
    import subprocess
    if not rabbitmq_reachable() or shutil.which("rabbitmqctl") is None:
        skip_or_fail(f"RabbitMQ (with rabbitmqctl) at {TEST_RABBITMQ_URL}")
    name = f"dunning-test-{uuid.uuid4().hex[:10]}"
    user = (TEST_RABBITMQ_URL.split("//", 1)[1].split(":", 1)[0]) or "guest"
    for args in (["add_vhost", name], ["set_permissions", "-p", name, user, ".*", ".*", ".*"]):
        subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)

    def delete() -> None:
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", name], capture_output=True, timeout=60)
    return f"{TEST_RABBITMQ_URL.rstrip('/')}/{name}", delete


def base_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    """The environment of a service under test: SQLite under tmp_path, its own queue namespace."""
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
