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
from worker.db import Database


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

    from worker.embedded_redis import EmbeddedRedis

    env = dict(os.environ)
    from worker.metrics import ENV, reset_multiproc_dir  # one metrics directory for every process, emptied per run
    env[ENV] = str(reset_multiproc_dir(settings))
    embedded = None
    if not settings.redis_url:
        embedded = EmbeddedRedis(settings.var_dir / "valkey")
        env["REDIS_URL"] = embedded.start()
        print(f"embedded Redis-compatible server at {env['REDIS_URL']} (data in {embedded.data_dir})",
              flush=True)
    try:
        from worker.migrate import upgrade
        database = Database(settings.database_url)
        _, revision = upgrade(database)
        print(f"database {database.engine.url.render_as_string(hide_password=True)} (schema {revision})",
              flush=True)
        database.dispose()
        bin_dir = Path(sys.executable).parent
        env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
        manager = Manager(Printer(sys.stdout))
        for name, command in procfile_entries().items():
            manager.add_process(name, command, env=env, cwd=str(PROJECT_ROOT))
        print(f"webhook receiver on http://127.0.0.1:{settings.port}/webhooks/stripe", flush=True)
        manager.loop()
        return manager.returncode or 0
    finally:
        if embedded is not None:
            embedded.stop()


