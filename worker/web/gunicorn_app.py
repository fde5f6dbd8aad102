"""Run the WSGI app under gunicorn (threads per worker; the runtime is built after fork).

The worker class is worker.web.server.BufferingThreadWorker: gthread, except that a request is
read whole (under the WEB_READ_TIMEOUT deadline) before it takes a thread, so slow or stalled
clients cannot hold the threads.
"""

from __future__ import annotations

from typing import Any, Callable

from gunicorn.app.base import BaseApplication

from worker.observe.stdlib_logs import gunicorn_logger_class


class _App(BaseApplication):
    def __init__(self, options: dict, app_factory: Callable[[], Any] | None = None):
        self.options = options
        self.app_factory = app_factory  # called in each worker after fork (worker.runtime.web_app)
        super().__init__()

    def load_config(self):
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        return self.app_factory()


def serve(host: str, port: int, workers: int, threads: int, read_timeout: float = 10.0,
          app_factory: Callable[[], Any] | None = None) -> None:
    """Serve the WSGI app `app_factory` builds (once per worker, after fork) with gunicorn."""
    from worker.web.server import BufferingThreadWorker
    BufferingThreadWorker.read_timeout = float(read_timeout)  # set before fork: every worker has it
    _App({
        "bind": f"{host}:{port}",
        "workers": workers,
        "threads": threads,
        "worker_class": BufferingThreadWorker,
        "timeout": 60,
        "graceful_timeout": 20,
        "accesslog": None,
        "preload_app": False,
        "logger_class": gunicorn_logger_class(),  # its lines through our formatter (JSON in production)
        "control_socket_disable": True,  # several gunicorns on one host must not share ~/.gunicorn/gunicorn.ctl
    }, app_factory).run()
