"""In JSON mode, library and server lines (Dramatiq, gunicorn) are JSON too: one record per line,
the traceback inside it, scrubbed like our own events."""

from __future__ import annotations

import io
import json
import logging
import sys

import pytest

from worker.observe.logs import configure_logging, register_secrets


@pytest.fixture
def stderr(monkeypatch):
    """The process's stderr as a string buffer while logging is configured on it; afterwards
    logging is configured again on the real stderr (later tests must not write to a closed one)."""
    buffer = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buffer)
    configure_logging("json", "INFO")
    yield buffer
    monkeypatch.undo()
    configure_logging("json", "INFO")


def test_a_library_record_with_a_traceback_is_one_scrubbed_json_line(stderr, monkeypatch):
    # As a fresh worker process has it: an earlier test in this process may have run a library's
    # logging set-up that silenced Dramatiq's loggers (seen only in a parallel run of the whole suite).
    for name in ("dramatiq", "dramatiq.worker", "dramatiq.worker.Worker"):
        for attribute, value in (("disabled", False), ("propagate", True), ("level", logging.NOTSET)):
            monkeypatch.setattr(logging.getLogger(name), attribute, value)
    secret = "sk_live_library_line_secret_0123456789"
    register_secrets([secret])
    try:
        raise RuntimeError(f"connection refused using {secret} for ada@example.com")
    except RuntimeError:
        logging.getLogger("dramatiq.worker.Worker").exception("Consumer encountered a connection error")
    lines = [line for line in stderr.getvalue().splitlines() if line.strip()]
    assert len(lines) == 1, lines
    record = json.loads(lines[0])
    assert record["logger"] == "dramatiq.worker.Worker" and record["level"] == "error"
    assert record["event"] == "Consumer encountered a connection error"
    assert "RuntimeError" in record["exception"] and "Traceback" in record["exception"]
    assert secret not in lines[0] and "ada@example.com" not in lines[0] and "[email]" in lines[0]


def test_gunicorn_hands_its_lines_to_the_root_logger(stderr):
    from gunicorn.config import Config

    from worker.observe.stdlib_logs import gunicorn_logger_class
    logger = gunicorn_logger_class()(Config())
    assert logger.error_log.propagate and logger.error_log.handlers == []
    logger.info("Listening at: http://127.0.0.1:8000 (%s)", 42)
    [line] = [x for x in stderr.getvalue().splitlines() if x.strip()]
    assert json.loads(line)["event"] == "Listening at: http://127.0.0.1:8000 (42)"
