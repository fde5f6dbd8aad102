"""One base for every fake of what lies outside our walls at its HTTP boundary (Stripe, SendGrid,
the platform's receivers, Sentry): a real HTTP/1.1 server on 127.0.0.1 in a daemon thread.

A fake subclasses `FakeHTTPServer` and names its request handler, a `FakeHandler` subclass; the
handler reaches the fake's state as `self.fake`. `with Fake() as fake:` starts and stops it.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeHandler(BaseHTTPRequestHandler):
    """Keep-alive HTTP/1.1, no access log; helpers to read the body and to answer."""

    protocol_version = "HTTP/1.1"
    fake: Any  # the FakeHTTPServer this handler serves (set per server)

    def log_message(self, *args):  # keep test output clean
        pass

    def read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def answer(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def hang_up(self, seconds: float) -> None:
        """Hold the connection past the client's timeout, then drop it without an answer."""
        time.sleep(seconds)
        self.close_connection = True


class FakeHTTPServer:
    """A fake service on 127.0.0.1 (a free port unless `port` is given: a receiver brought back on
    the port it was down on). `lock` guards what handler threads record."""

    handler: type[FakeHandler]

    def __init__(self, port: int = 0):
        self.lock = threading.Lock()
        handler = type(self.handler.__name__, (self.handler,), {"fake": self})
        self.httpd = _ReusableServer(("127.0.0.1", port), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.stop()


class _ReusableServer(ThreadingHTTPServer):
    allow_reuse_address = True
