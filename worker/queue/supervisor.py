"""Keep the Dramatiq worker pool running: restart it when it dies, stop it when asked.

Dramatiq's CLI exits as soon as one of its worker processes dies (an OOM kill, say), expecting
an outside supervisor. Under `make run` the Procfile runner would then stop the web process and
the scheduler too. This small loop is that supervisor: it forwards SIGINT/SIGTERM to the pool and
exits with it; any other exit restarts the pool after a short, growing pause. Messages held by
the dead processes are redelivered by the broker (heartbeat timeout), so none is lost.

Under an orchestrator (systemd, Kubernetes, Nomad) that restart hides a crash loop from it:
`dunning worker --no-supervise` (restart=False) exits with the pool's exit code instead.
"""

from __future__ import annotations

import signal
import subprocess
import time

import structlog

log = structlog.get_logger("worker.queue.supervisor")
MAX_PAUSE_SECONDS = 30.0


def supervise(command: list[str], *, restart: bool = True, env: dict[str, str] | None = None) -> int:
    stopping = False
    child: subprocess.Popen | None = None

    def forward(signum, _frame):
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, forward)

    pause = 1.0
    while True:
        started = time.monotonic()
        child = subprocess.Popen(command, env=env)
        code = child.wait()
        if stopping or code == 0:
            return code
        if not restart:
            log.error("worker.pool_exited", exit_code=code, restart_in=None)
            return code
        if time.monotonic() - started > 60:
            pause = 1.0  # it ran a good while: this is a new failure, not a crash loop
        log.error("worker.pool_exited", exit_code=code, restart_in=pause)
        deadline = time.monotonic() + pause
        while not stopping and time.monotonic() < deadline:
            time.sleep(0.1)
        if stopping:
            return code
        pause = min(pause * 2, MAX_PAUSE_SECONDS)
