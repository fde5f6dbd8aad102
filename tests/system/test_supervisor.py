"""`dunning worker` keeps the Dramatiq pool running: restart after a crash, stop when asked."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

from config.settings import PROJECT_ROOT
from worker.queue.supervisor import supervise


def script(tmp_path, body: str) -> list[str]:
    path = tmp_path / "child.py"
    path.write_text(textwrap.dedent(body))
    return [sys.executable, str(path)]


def test_a_pool_that_dies_is_restarted_until_it_exits_cleanly(tmp_path):
    counter = tmp_path / "runs"
    command = script(tmp_path, f"""
        import pathlib, sys
        runs = pathlib.Path({str(counter)!r})
        n = int(runs.read_text()) + 1 if runs.exists() else 1
        runs.write_text(str(n))
        sys.exit(0 if n == 3 else 1)   # dies twice (an OOM kill, say), then stops cleanly
    """)
    assert supervise(command) == 0
    assert counter.read_text() == "3"


def test_sigterm_is_forwarded_to_the_pool_and_nothing_is_restarted(tmp_path):
    started = tmp_path / "started"
    child = script(tmp_path, f"""
        import pathlib, signal, sys, time
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        pathlib.Path({str(started)!r}).write_text("x")
        time.sleep(60)
    """)
    runner = [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(PROJECT_ROOT)!r}); "
              f"from worker.queue.supervisor import supervise; sys.exit(supervise({child!r}))"]
    proc = subprocess.Popen(runner)
    try:
        deadline = time.monotonic() + 20
        while not started.exists():
            assert time.monotonic() < deadline, "the pool never started"
            time.sleep(0.05)
        started.unlink()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        time.sleep(0.5)
        assert not started.exists(), "the pool was restarted after a requested stop"
    finally:
        if proc.poll() is None:
            proc.kill()
