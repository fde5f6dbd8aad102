"""Library and server log lines (Dramatiq, gunicorn, Alembic, pika...) in the service's own format.

In JSON mode a stdlib record goes through the same structlog processors as our own events
(level, logger name, UTC timestamp, the scrubber) and comes out as one JSON object on one line,
its traceback inside it, so a log shipper never sees a plain-text line or one record split or
glued to another. Console mode keeps the readable line, scrubbed.
"""

from __future__ import annotations

import logging

import structlog


def stdlib_formatter(log_format: str) -> logging.Formatter:
    from worker.observe.logs import ScrubbingFormatter, scrub_processor
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


def gunicorn_logger_class():
    """gunicorn's Logger, its error log handed to the root logger (our formatter) instead of its own
    plain-text handler."""
    from gunicorn.glogging import Logger

    class RootLogger(Logger):
        def setup(self, cfg):
            super().setup(cfg)
            for log in (self.error_log, self.access_log):
                for handler in list(log.handlers):
                    log.removeHandler(handler)
                log.propagate = True

    return RootLogger
