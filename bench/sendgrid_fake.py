"""A SendGrid stand-in at its HTTP boundary: accepts POST /v3/mail/send, notes when each arrived.

The service is pointed at it with SENDGRID_API_HOST; the email is "handed to the sender" the
moment this server has read the request. Each record keeps the arrival time (time.time(), the
same clock as the events' received_at) and the X-Dunning-* headers, which name the template and
the invoice so an email can be matched to the webhook event that caused it.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler

from bench.local_server import LocalServer


@dataclass(frozen=True)
class SentMail:
    at: float
    template: str | None
    invoice: str | None
    customer: str | None
    invoices: tuple[str, ...] = ()  # every invoice an account email covers (X-Dunning-Invoice, comma-separated)


def _headers_of(message: dict) -> dict[str, str]:
    """X-Dunning-* headers wherever the v3 body puts them (top level or per personalization)."""
    found: dict[str, str] = {}
    if isinstance(message.get("headers"), dict):
        found.update(message["headers"])
    for person in message.get("personalizations") or []:
        if isinstance(person, dict) and isinstance(person.get("headers"), dict):
            found.update(person["headers"])
    return {str(k).lower(): str(v) for k, v in found.items()}


class SendGridFake(LocalServer):
    def __init__(self, host: str = "127.0.0.1"):
        self.mails: list[SentMail] = []
        self.rejected = 0
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                arrived = time.time()
                if self.path.rstrip("/") != "/v3/mail/send":
                    return self._answer(404, b'{"errors":[{"message":"not found"}]}')
                try:
                    headers = _headers_of(json.loads(raw))
                except ValueError:
                    with fake._lock:
                        fake.rejected += 1
                    return self._answer(400, b'{"errors":[{"message":"bad json"}]}')
                with fake._lock:
                    named = headers.get("x-dunning-invoice")
                    covered = tuple(i.strip() for i in named.split(",") if i.strip()) if named else ()
                    fake.mails.append(SentMail(arrived, headers.get("x-dunning-template"),
                                               covered[0] if covered else named,
                                               headers.get("x-dunning-customer"), covered))
                self._answer(202, b"")

            def _answer(self, status: int, body: bytes):
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("X-Message-Id", f"bench-{time.monotonic_ns()}")
                self.end_headers()
                if body:
                    self.wfile.write(body)

            def log_message(self, *args):  # quiet
                pass

        super().__init__(Handler, host, name="sendgrid-fake")

    def snapshot(self) -> list[SentMail]:
        with self._lock:
            return list(self.mails)
