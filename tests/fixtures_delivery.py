"""Builders and local HTTP fakes for the delivery tests (emails, notices).

Rows are inserted directly with SQLAlchemy Core through a HandlerContext (from the unit of work), so these tests do not
depend on the state machine. What lies outside our walls (SendGrid, the platform's receiver)
is faked at its HTTP boundary: a real http.server in a thread, scripted per test.
"""

from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

import structlog

from handlers.context import HandlerContext
from worker.infra.unit_of_work import unit_of_work
from worker.pure.clock import utcnow
from worker.infra.db import dumps

log = structlog.get_logger("tests.delivery")


# -- rows ---------------------------------------------------------------------------------
def seed_case(runtime, *, case_id="dc_test_1", invoice_id="in_test_1", customer_id="cus_test_1",
              subscription_id="sub_test_1", email="owner@example.com", name="Ada Lovelace",
              currency="usd", amount=2500, customer_metadata=None, subscription_metadata=None,
              state="failing", disrupt_at=None) -> dict:
    """A customer, subscription, open invoice and case, as the state machine would leave them."""
    now = utcnow()
    db = runtime.db
    db.tables  # reflect before BEGIN IMMEDIATE: reflection uses a second SQLite connection
    with db.transaction() as conn:
        conn.execute(db.table("customers").insert().values(
            id=customer_id, email=email, name=name, metadata=dumps(customer_metadata or {}),
            deleted=False, source_created=0, updated_at=now))
        if subscription_id:
            conn.execute(db.table("subscriptions").insert().values(
                id=subscription_id, customer_id=customer_id, status="past_due",
                metadata=dumps(subscription_metadata or {}), source_created=0, updated_at=now))
        conn.execute(db.table("invoices").insert().values(
            id=invoice_id, customer_id=customer_id, subscription_id=subscription_id,
            number=f"NUM-{invoice_id[-4:]}", status="open", currency=currency, amount_due=amount,
            amount_remaining=amount, hosted_invoice_url=f"https://invoice.stripe.com/i/{invoice_id}",
            invoice_pdf=f"https://pay.stripe.com/invoice/{invoice_id}/pdf", source_created=0, updated_at=now))
        conn.execute(db.table("cases").insert().values(
            id=case_id, invoice_id=invoice_id, customer_id=customer_id, subscription_id=subscription_id,
            account_id=subscription_id or customer_id, state=state, schedule="default", currency=currency,
            amount_due=amount, first_failed_at=now, attempt_count=1,
            next_payment_attempt=now + timedelta(days=3), card_brand="visa", card_last4="4242",
            last_failure_message="Your card was declined.", disrupt_at=disrupt_at, opened_at=now,
            updated_at=now))
    return {"case_id": case_id, "invoice_id": invoice_id, "customer_id": customer_id,
            "subscription_id": subscription_id, "account_id": subscription_id or customer_id}


def in_handler(runtime, fn: Callable[[HandlerContext], object], now: datetime | None = None):
    """Run fn(ctx) inside one transaction like a handler does, then the after-commit work."""
    with unit_of_work(runtime, now=now, log=log) as ctx:
        result = fn(ctx)
    return result


# -- local HTTP fakes ---------------------------------------------------------------------
class ScriptedServer:
    """An HTTP server in a thread that records every request and answers from a script.

    `script(request_number, request) -> (status, headers, body)` or the string "hang" (hold the
    connection past the client's timeout, then close it without an answer).
    """

    def __init__(self, script, port: int = 0):
        self.script = script
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.hang_seconds = 2.0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802 (http.server naming)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                with outer.lock:
                    request = {"path": self.path, "headers": dict(self.headers.items()), "raw": raw,
                               "n": len(outer.requests) + 1}
                    outer.requests.append(request)
                answer = outer.script(request["n"], request)
                if answer == "hang":
                    time.sleep(outer.hang_seconds)
                    self.close_connection = True
                    return
                status, headers, body = answer
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                request["answered"] = status

            def log_message(self, *args):  # keep pytest output clean
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def answered(self, status: int) -> list[dict]:
        return [r for r in self.requests if r.get("answered") == status]

    def start(self) -> "ScriptedServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def free_port() -> int:
    """A port nothing listens on (yet): for a receiver that is down, then brought back."""
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def scripted_server(script, port: int = 0):
    server = ScriptedServer(script, port).start()
    try:
        yield server
    finally:
        server.stop()
