"""`dunning run` (what `make run` calls): the whole service in the foreground.

Starts the embedded Redis-compatible server when REDIS_URL is unset, migrates the database, then
runs the Procfile's processes under honcho with the same environment. Ctrl-C or SIGTERM stops
every process it started, the embedded server last: no orphans.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from config.settings import PROJECT_ROOT, Settings
from worker.infra.db import Database


# Run once per deploy by the platform (Heroku-style `release:`), not kept running: `dunning run`
# migrates before it starts the others.
ONE_OFF_ENTRIES = ("release",)


def procfile_entries(path: Path = PROJECT_ROOT / "Procfile") -> dict[str, str]:
    """The Procfile's long-running processes (one-off entries such as `release` left out)."""
    entries: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and ":" in line:
            name, command = line.split(":", 1)
            if name.strip() not in ONE_OFF_ENTRIES:
                entries[name.strip()] = command.strip()
    return entries


def run_all(settings: Settings) -> int:
    from honcho.manager import Manager
    from honcho.printer import Printer

    from worker.infra.embedded_redis import EmbeddedRedis

    env = dict(os.environ)
    from worker.observe.metrics import ENV, reset_multiproc_dir  # one metrics directory for every process, emptied per run
    env[ENV] = str(reset_multiproc_dir(settings))
    embedded = None
    if not settings.platform_webhook_url and not settings.platform_webhook_secret:
        env["PLATFORM_WEBHOOK_SECRET"] = local_notice_secret(settings.var_dir)  # notice files are signed too
    if not settings.redis_url and not settings.broker_url:
        embedded = EmbeddedRedis(settings.var_dir / "valkey")
        env["REDIS_URL"] = embedded.start()
        print(f"embedded Redis-compatible server at {env['REDIS_URL']} (data in {embedded.data_dir})",
              flush=True)
    try:
        from worker.infra.migrate import upgrade
        database = Database(settings.database_url)
        _, revision = upgrade(database)
        database.dispose()
        bin_dir = Path(sys.executable).parent
        env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
        manager = Manager(Printer(sys.stdout))
        for name, command in procfile_entries().items():
            manager.add_process(name, command, env=env, cwd=str(PROJECT_ROOT))
        for line in banner(settings, env, revision):
            print(line, flush=True)
        manager.loop()
        # honcho answers Ctrl-C / SIGTERM with 130 / 143; a stop that was asked for is a success
        # (no `make: *** Error 130`). A process that died on its own keeps its exit code.
        code = manager.returncode or 0
        return 0 if code in (130, 143) else code
    finally:
        if embedded is not None:
            embedded.stop()


def local_notice_secret(var_dir: Path) -> str:
    """A development PLATFORM_WEBHOOK_SECRET, made once and kept under var/ (mode 0600)."""
    import secrets
    path = Path(var_dir) / "platform-webhook-secret"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"dunning_local_{secrets.token_hex(24)}\n")
        path.chmod(0o600)
    return path.read_text().strip()


def banner(settings: Settings, env: dict[str, str], revision: str | None) -> list[str]:
    """Where everything is: the webhook URL, the emails, the notices, the database and the broker."""
    from sqlalchemy.engine import make_url

    def hide(url: str) -> str:
        return make_url(url).render_as_string(hide_password=True) if "://" in url else url

    host = env.get("HOST") or "127.0.0.1"
    host = "127.0.0.1" if host == "0.0.0.0" else host
    if settings.sendgrid_api_key:
        emails = f"SendGrid ({settings.sendgrid_api_host or 'https://api.sendgrid.com'})"
    else:
        emails = f".eml files in {settings.email_outbox_dir}"
    if settings.platform_webhook_url:
        notices = f"signed POSTs to {settings.platform_webhook_url}"
    elif settings.platform_webhook_secret:
        notices = f"signed JSON files in {settings.notice_outbox_dir}"
    else:
        notices = (f"signed JSON files in {settings.notice_outbox_dir} "
                   f"(secret in {Path(settings.var_dir) / 'platform-webhook-secret'})")
    broker = hide(settings.broker_url) if settings.uses_rabbitmq else hide(env.get("REDIS_URL", ""))
    if settings.stripe_api_key:
        stripe_api = settings.stripe_api_base or "https://api.stripe.com"
    else:  # what an operator trying the service locally would otherwise meet as unexplained failures
        stripe_api = ("off: no STRIPE_API_KEY (no reading at Stripe before a step, "
                      "no card retries: they end failed, no payment links)")
    return [
        f"webhook receiver  http://{host}:{settings.port}/webhooks/stripe",
        f"emails            {emails}",
        f"platform notices  {notices}",
        f"Stripe API        {stripe_api}",
        f"database          {hide(settings.database_url)} (schema {revision})",
        f"broker            {'RabbitMQ' if settings.uses_rabbitmq else 'Redis'} {broker}",
    ]
