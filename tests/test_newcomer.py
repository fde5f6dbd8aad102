"""A newcomer's first minutes: read-only commands need only DATABASE_URL, `dunning --version`."""

from __future__ import annotations

import json
import os
import subprocess

from tests.proc import DUNNING

SERVICE_VARS = ("STRIPE_WEBHOOK_SECRET", "ADMIN_TOKEN", "REDIS_URL", "BROKER_URL", "DATABASE_URL")


def dunning(tmp_path, *args, **env):
    base = {k: v for k, v in os.environ.items() if k not in SERVICE_VARS}
    base.update({"DATABASE_URL": f"sqlite:///{tmp_path / 'd.sqlite3'}", "DUNNING_VAR_DIR": str(tmp_path / "var"),
                 "LOG_FORMAT": "json"})
    base.update(env)
    return subprocess.run([DUNNING, *args], env=base, capture_output=True, text=True, timeout=60)


def test_read_only_commands_need_only_the_database_url(tmp_path):
    assert dunning(tmp_path, "db", "upgrade").returncode == 0
    stats = dunning(tmp_path, "stats", "--json")
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["events"] == {}
    assert dunning(tmp_path, "cases", "list", "--json").returncode == 0
    assert dunning(tmp_path, "events", "list", "--json").returncode == 0


def test_the_web_process_still_refuses_to_start_without_its_secrets(tmp_path):
    web = dunning(tmp_path, "web")
    assert web.returncode == 2
    assert "STRIPE_WEBHOOK_SECRET is required" in web.stderr


def test_version_prints_the_installed_release(tmp_path):
    from importlib.metadata import version
    done = dunning(tmp_path, "--version")
    assert done.returncode == 0 and done.stdout.strip() == f"dunning {version('dunning-worker')}"
