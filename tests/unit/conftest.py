"""The unit tier's rule, checked: nothing outside the test process but the database.

A unit test that asks for a broker server or starts a child process fails here with the tier it
belongs to, instead of quietly making the fast tier slow and dependent on what runs on the machine.
"""

from __future__ import annotations

import platform
import subprocess

import pytest

# The standard library runs `uname -p` once per process for the processor's name, which stripe's
# user agent reads (platform.platform()): asked here, before the guard below, so that whichever unit
# test first builds a Stripe request (the first of a file run alone) is not refused a process it
# did not start.
platform.processor()


def _belongs_elsewhere(what: str):
    pytest.fail(f"a unit test uses {what}: move it to tests/integration/ (or tests/system/)", pytrace=False)


@pytest.fixture(scope="session")
def redis_url():
    _belongs_elsewhere("Redis")


@pytest.fixture(scope="session")
def rabbitmq_url():
    _belongs_elsewhere("RabbitMQ")


@pytest.fixture(scope="session")
def embedded_redis_url():
    _belongs_elsewhere("the embedded valkey server")


@pytest.fixture(autouse=True)
def _no_child_process(monkeypatch):
    def refuse(popen, *args, **kwargs):  # `popen` is not initialized: its repr would fail
        _belongs_elsewhere(f"a child process ({args[0] if args else kwargs.get('args')!r})")
    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
