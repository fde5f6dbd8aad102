"""The server of the bench's local HTTP stand-ins (SendGrid's, Stripe's API): threaded, run on a
daemon thread of the bench's own process (so its CPU is never the measured service's), with
TCP_NODELAY on every connection it accepts.

Why TCP_NODELAY: a stand-in that answers a keep-alive client in two sends (the head, then the
body, as http.server does) would otherwise hold the body until the client acknowledges the head,
and Linux delays that acknowledgement up to 40 ms: the benchmark would measure Nagle's algorithm,
not the client.
"""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self


class NoDelayServer(ThreadingHTTPServer):
    daemon_threads = True

    def get_request(self):
        sock, addr = super().get_request()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, addr


class LocalServer:
    """Serves `handler` on host:port (0: a free port) once started; `url` says where."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], host: str = "127.0.0.1", port: int = 0,
                 name: str = "local-http"):
        self.server = NoDelayServer((host, port), handler)
        self.url = f"http://{host}:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name=name, daemon=True)

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
