"""SendGrid and platform notices go over one pooled keep-alive connection per host, with the
timeouts kept (worker/infra/http_pool.py): a fake server at the HTTP boundary counts connections."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest

from tests.support.http_fake import FakeHandler, FakeHTTPServer
from worker.delivery.email_delivery import OutgoingEmail, SendGridSender, TransientSendError
from worker.delivery.notices import DeliveryFailed, post_notice

KEY = "SG.pool-test-key-0123456789abcdef"
SECRET = "platform-notice-secret-0123456789abcdef"


class _CountingHandler(FakeHandler):
    def do_POST(self):  # noqa: N802
        self.read_body()
        self.fake.ports.append(self.client_address[1])
        time.sleep(self.fake.delay)
        self.answer(202, headers={"X-Message-Id": f"sg-{len(self.fake.ports)}"})


class CountingServer(FakeHTTPServer):
    """HTTP/1.1 keep-alive server: answers 202 (after `delay` seconds) and records client ports."""

    handler = _CountingHandler

    def __init__(self, delay: float = 0.0):
        super().__init__()
        self.ports: list[int] = []
        self.delay = delay


def _email(n: int) -> OutgoingEmail:
    return OutgoingEmail(id=f"em_{n}", template="payment-failed", recipient="owner@example.com",
                         subject="Your payment failed", text="t", html="<p>t</p>", invoice_id="in_1",
                         customer_id="cus_1", case_id="dc_1", created_at=datetime.now(timezone.utc))


def test_sendgrid_emails_reuse_one_connection():
    with CountingServer() as server:
        sender = SendGridSender(KEY, "Billing <billing@example.com>", server.url, timeout=2.0)
        ids = [sender.send(_email(n)) for n in range(5)]
    assert ids == [f"sg-{n}" for n in range(1, 6)]
    assert len(set(server.ports)) == 1, server.ports  # one TCP connection for five emails


def test_platform_notices_reuse_one_connection():
    with CountingServer() as server:
        for n in range(5):
            assert post_notice(server.url + "/hooks", f"ntc_{n}", '{"n": %d}' % n, [SECRET]) == 202
    assert len(server.ports) == 5 and len(set(server.ports)) == 1, server.ports


@pytest.mark.parametrize("kind", ["sendgrid", "notice"])
def test_a_silent_server_times_out_as_a_transient_failure(kind):
    with CountingServer(delay=3.0) as server:
        started = time.monotonic()
        if kind == "sendgrid":
            with pytest.raises(TransientSendError, match="SendGrid unreachable"):
                SendGridSender(KEY, "billing@example.com", server.url, timeout=0.5).send(_email(1))
        else:
            with pytest.raises(DeliveryFailed):
                post_notice(server.url, "ntc_1", "{}", [SECRET], timeout=0.5)
        assert time.monotonic() - started < 2.5
