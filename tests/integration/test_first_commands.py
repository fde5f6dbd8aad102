"""A newcomer's first minutes: read-only commands need only DATABASE_URL, `dunning --version`."""

from __future__ import annotations

import json
import os
import subprocess

from tests.support.processes import DUNNING
from tests.support.services import base_env

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


def test_make_run_signs_notice_files_with_a_local_secret_kept_under_var(tmp_path):
    from worker.cli.launcher import local_notice_secret
    first = local_notice_secret(tmp_path / "var")
    assert len(first) >= 24 and local_notice_secret(tmp_path / "var") == first
    assert (tmp_path / "var" / "platform-webhook-secret").stat().st_mode & 0o077 == 0


def test_the_start_banner_says_where_webhooks_emails_notices_database_and_broker_are(tmp_path):
    from config.settings import load_settings
    from tests.support.services import base_env
    from worker.cli.launcher import banner
    env = base_env(tmp_path, HOST="0.0.0.0", PORT="8123")
    env.pop("NOTICE_OUTBOX_DIR")
    lines = banner(load_settings(env), {"REDIS_URL": "redis://:pw@127.0.0.1:6400/0", "HOST": "0.0.0.0"}, "0002_x")
    text = "\n".join(lines)
    assert "http://127.0.0.1:8123/webhooks/stripe" in text
    assert f".eml files in {tmp_path / 'outbox'}" in text
    assert f"signed JSON files in {tmp_path / 'var' / 'notices'}" in text
    assert "(schema 0002_x)" in text and "Redis redis://:***@127.0.0.1:6400/0" in text
    assert "Stripe API        off: no STRIPE_API_KEY (" in text and "card retries: they end failed" in text
    keyed = banner(load_settings({**env, "STRIPE_API_KEY": "sk_test_x", "STRIPE_API_BASE": "http://127.0.0.1:8420"}),
                   {}, None)
    assert "Stripe API        http://127.0.0.1:8420" in keyed and not any("sk_test_x" in line for line in keyed)
    rabbit = banner(load_settings({**env, "BROKER_URL": "amqp://guest:secret@mq:5672/dunning"}), {}, None)
    assert rabbit[-1] == "broker            RabbitMQ amqp://guest:***@mq:5672/dunning"


def test_dunning_run_exits_with_one_line_naming_the_misspelt_step_email(tmp_path):
    """The policy is checked against the templates at start-up: a misspelt step email stops `dunning
    run` with one line naming the step and the known templates (issue 11)."""
    policy = tmp_path / "typo.toml"
    policy.write_text('[schedules.default]\ndisrupt_after_days = 14\nsteps = [\n'
                      '  { day = 0, email = "payment-failed" },\n  { day = 3, email = "remider" },\n]\n')
    environ = {**base_env(tmp_path), "DUNNING_POLICY": str(policy)}  # every other setting valid
    done = subprocess.run([DUNNING, "run"], env=environ, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("configuration error: ") and "names email 'remider'" in lines[0]
    assert "known: action-required," in lines[0]


def test_a_template_that_does_not_compile_stops_start_up_naming_its_file_and_line(tmp_path):
    """An EMAIL_TEMPLATES_DIR file Jinja2 cannot compile stops `dunning run` and `dunning worker`
    at start-up, with one line naming the file and line, rather than failing every email that uses
    it (the worker processes compile every template as they start: issue 17)."""
    override = tmp_path / "templates"
    (override / "reminder").mkdir(parents=True)
    (override / "reminder" / "subject.txt").write_text("Reminder\n{% if %}unpaid{% endif %}\n")
    (override / "NOTES.md").write_text("not a template: {% if %}\n")  # only .txt and .html are templates
    environ = {**base_env(tmp_path), "EMAIL_TEMPLATES_DIR": str(override), "REDIS_URL": "redis://127.0.0.1:6379/0"}
    for command in (["run"], ["worker", "--processes", "1", "--threads", "1"]):
        done = subprocess.run([DUNNING, *command], env=environ, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, done.stderr[-2000:]
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, done.stderr
        assert lines[0].startswith("configuration error: "), lines[0]
        assert f"{override / 'reminder' / 'subject.txt'}, line 2: " in lines[0], lines[0]
