"""Library and server log lines (Dramatiq, gunicorn, Alembic, pika...) in the service's own format.

In JSON mode a stdlib record goes through the same structlog processors as our own events
(level, logger name, UTC timestamp, the scrubber) and comes out as one JSON object on one line,
its traceback inside it, so a log shipper never sees a plain-text line or one record split or
glued to another. Console mode keeps the readable line, scrubbed. The formatter is built in logs.py
(beside the scrubber it uses); this module hands it to gunicorn.
"""

from __future__ import annotations



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
