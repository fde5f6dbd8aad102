"""Every log line is one whole JSON record: many threads in many processes, our structlog events
and library (stdlib) records mixed, long and short, never glue or split (worker/observe/log_lines.py)."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import threading
from pathlib import Path

from dramatiq.compat import StreamablePipe

PROCESSES, THREADS, RECORDS = 4, 8, 150

_WRITER = r"""
import logging, sys, threading
import structlog
from worker.observe.logs import configure_logging
configure_logging("json", "INFO")
proc = int(sys.argv[1]); threads, records = int(sys.argv[2]), int(sys.argv[3])
def work(t):
    log, lib = structlog.get_logger("test.lines"), logging.getLogger("dramatiq.test")
    for i in range(records):
        pad = "x" * ((i * 397) % 3000)  # short and long records (up to ~3 KB)
        if i % 2:
            log.info("line.structlog", proc=proc, thread=t, seq=i, pad=pad)
        else:
            lib.info("line.stdlib %s %s %s %s", proc, t, i, pad)
ts = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
[t.start() for t in ts]; [t.join() for t in ts]
"""


def _check(lines: list[str], expected: int) -> None:
    bad = []
    for line in lines:
        try:
            record = json.loads(line)
            assert isinstance(record, dict) and record.get("event", "").startswith("line.")
        except (ValueError, AssertionError):
            bad.append(line[:200])
    assert not bad, f"{len(bad)} lines are not one JSON record: {bad[:3]}"
    assert len(lines) == expected


def test_threads_and_processes_sharing_one_stderr_write_whole_lines(tmp_path: Path):
    path = tmp_path / "shared.log"
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    with open(path, "ab") as shared:  # one O_APPEND file as every process's stderr
        procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(p), str(THREADS), str(RECORDS)],
                                  stderr=shared, env=env, cwd=repo) for p in range(PROCESSES)]
        assert [p.wait(timeout=120) for p in procs] == [0] * PROCESSES
    _check(path.read_text().splitlines(), PROCESSES * THREADS * RECORDS)


def test_threads_on_dramatiqs_worker_pipe_send_one_message_per_record(monkeypatch):
    """A Dramatiq worker process's stderr is a message pipe to its parent, which writes each
    message as it comes: each record and its newline must be one message."""
    import logging

    import structlog

    from worker.observe.logs import configure_logging
    read_end, write_end = multiprocessing.Pipe(duplex=False)
    messages: list[bytes] = []
    reader = threading.Thread(target=lambda: _drain(read_end, messages))
    reader.start()
    monkeypatch.setattr(sys, "stderr", StreamablePipe(write_end))
    configure_logging("json", "INFO")
    try:
        def work(t):
            log, lib = structlog.get_logger("test.lines"), logging.getLogger("dramatiq.test")
            for i in range(RECORDS):
                (log.info("line.structlog", thread=t, seq=i, pad="y" * (i * 131 % 2000)) if i % 2
                 else lib.info("line.stdlib %s %s", t, i))
        threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
        [t.start() for t in threads]
        [t.join() for t in threads]
    finally:
        monkeypatch.undo()
        configure_logging("json", "INFO")
        write_end.close()
        reader.join(timeout=30)
    assert all(m.endswith(b"\n") and m.count(b"\n") == 1 for m in messages), "a record split or glued"
    _check([m.decode().rstrip("\n") for m in messages], THREADS * RECORDS)


def _drain(conn, into: list[bytes]) -> None:
    while True:
        try:
            into.append(conn.recv_bytes())
        except EOFError:
            return
