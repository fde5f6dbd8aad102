"""Run the WSGI app under gunicorn (threads per worker; the runtime is built after fork).

The worker class is worker.web.server.BufferingThreadWorker: gthread, except that a request is
read whole (under the WEB_READ_TIMEOUT deadline) before it takes a thread, so slow or stalled
clients cannot hold the threads.
"""

from __future__ import annotations

from gunicorn.app.base import BaseApplication

from worker.observe.stdlib_logs import gunicorn_logger_class


class _App(BaseApplication):
    def __init__(self, options: dict):
        self.options = options
        super().__init__()

    def load_config(self):
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        from worker.web.app import wsgi_app
        return wsgi_app()


def serve(host: str, port: int, workers: int, threads: int, read_timeout: float = 10.0) -> None:
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
    }).run()
