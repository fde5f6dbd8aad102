"""structlog set up once per process: JSON lines in production, readable console under `make run`.

Secrets never reach a log line: known secret values are replaced by '***' and email addresses
(whole, or already masked as a***@example.com) become '[email]' by a processor that sees every
event dict. Logs carry ids, never personal data: no address, name, phone or postal address at any
level (tests/integration/test_privacy.py scans a whole failure-to-recovery flow for distinctive values).
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any, Iterable

import structlog

from worker.observe.log_lines import LineHandler, LineLoggerFactory

# Every address form the service accepts (handlers/policy.py) or Stripe may send: RFC 5322 atext
# local parts and quoted ones ("john doe"@...), non-ASCII local parts and domains (RFC 6531),
# IP literals. Bounded repeats keep the scan linear.
_LOCAL = r'(?:"(?:[^"\\\r\n]|\\.){0,200}"|[\w.!#$%&\'*+/=?^`{|}~\-]{1,200})'
_DOMAIN = r"(\[[0-9A-Fa-f:.]{2,60}\]|[\w\-]{1,63}(?:\.[\w\-]{1,63})*)"
EMAIL_RE = re.compile(f"({_LOCAL})@{_DOMAIN}")
URL_PASSWORD_RE = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@]*:)[^\s@/]+@")
BEARER_RE = re.compile(r"(?i)(bearer\s+|basic\s+)[A-Za-z0-9._~+/=\-]+")
# What any of the three patterns above needs to match: '@' (an address, a URL's password) or the
# word of an Authorization scheme, under the same flags. One scan of a value for it replaces three
# substitutions; most values (ids, types, flags) have none of them.
_SCRUB_HINT = re.compile(r"(?i)@|bearer|basic")
_SECRETS: list[str] = []


def mask_email(address: str | None) -> str | None:
    """'ada@example.com' -> 'a***@example.com' (enough to tell owners apart, not to mail them)."""
    if not address:
        return address
    return EMAIL_RE.sub(_mask, address)


def _mask(match: re.Match) -> str:
    return f"{match.group(1)[0]}***@{match.group(2)}"


def register_secrets(values: Iterable[str | None]) -> None:
    """Values that must never appear in a log line (API keys, webhook secrets, admin token)."""
    for value in values:
        if value and len(value) >= 6 and value not in _SECRETS:
            _SECRETS.append(value)


def scrub(text: str) -> str:
    for secret in _SECRETS:
        if secret in text:
            text = text.replace(secret, "***")
    if not _SCRUB_HINT.search(text):
        return text
    text = BEARER_RE.sub(lambda m: m.group(1) + "***", text)
    text = URL_PASSWORD_RE.sub(lambda m: m.group(1) + "***@", text)
    # Any address, masked or not, becomes [email]: the domain alone can name a person.
    return EMAIL_RE.sub("[email]", text)


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: _scrub_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_scrub_value(v) for v in value)
    return value


_PLAIN = (bool, int, float, type(None))  # values the scrubber leaves as they are


def scrub_processor(_logger, _name, event_dict: dict) -> dict:
    """Every value scrubbed. Most lines (ids, types, flags) need nothing: one scan of their text
    values joined tells, and the dict is returned as it is (a secret or a hint that spans two
    joined values only sends the line through the full scrub)."""
    texts = []
    for value in event_dict.values():
        if type(value) is str:
            texts.append(value)
        elif not isinstance(value, _PLAIN):
            return {k: _scrub_value(v) for k, v in event_dict.items()}
    text = "\n".join(texts)
    if _SCRUB_HINT.search(text):
        return {k: _scrub_value(v) for k, v in event_dict.items()}
    for secret in _SECRETS:
        if secret in text:
            return {k: _scrub_value(v) for k, v in event_dict.items()}
    return event_dict


class ScrubbingFormatter(logging.Formatter):
    """For stdlib records (dramatiq, gunicorn): scrub the formatted line too."""

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


def configure_logging(log_format: str = "json", level: str = "INFO") -> None:
    """Configure structlog and the stdlib root logger for this process (idempotent)."""
    renderer = (structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
                if log_format == "console" else structlog.processors.JSONRenderer(sort_keys=True))
    processors = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        scrub_processor,
        renderer,
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=LineLoggerFactory(file=sys.stderr),  # one write per record (worker/observe/log_lines.py)
        cache_logger_on_first_use=False,
    )
    handler = LineHandler(sys.stderr)
    handler.setFormatter(stdlib_formatter(log_format))  # JSON mode: library lines as JSON too
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_dunning", False):
            root.removeHandler(old)
    handler._dunning = True  # type: ignore[attr-defined]
    for other in root.handlers:  # handlers installed by others (the dramatiq CLI's basicConfig): scrub too
        if not isinstance(other.formatter, ScrubbingFormatter):
            other.setFormatter(ScrubbingFormatter(getattr(other.formatter, "_fmt", None)))
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("sendgrid").setLevel(logging.WARNING)
    logging.getLogger("python_http_client").setLevel(logging.WARNING)
    logging.getLogger("stripe").setLevel(logging.WARNING)


def stdlib_formatter(log_format: str) -> logging.Formatter:
    if log_format != "json":
        return ScrubbingFormatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            scrub_processor,
            structlog.processors.JSONRenderer(sort_keys=True),
        ],
    )

