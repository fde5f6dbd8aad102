"""`make bench-peer`'s parts that run everywhere: the Stripe API stub dj-stripe reads from, and the
section's refusal to run where dj-stripe is not installed. (The section itself runs in the smoke
bench, tests/system/test_bench_smoke.py, wherever `.venv-peer` exists: .ci/run makes it.)"""

from __future__ import annotations

import http.client
import json
import socket
import sys
from pathlib import Path

from bench.events import EventFactory
from bench.peer import PEER_VENV_PYTHON, check_peer
from bench.stripe_stub import ACCOUNT_ID, StripeStub


def _get(stub: StripeStub, path: str) -> tuple[int, dict]:
    host, port = stub.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", path, headers={"Authorization": "Bearer sk_test_x"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_the_stub_answers_with_the_latest_version_an_event_carried_else_a_made_up_object():
    factory = EventFactory("stubtest")
    customer_id = factory.new_customer_id()
    failed = factory.payment_failed(customer_id)
    paid = factory.paid(customer_id, failed.invoice_id)
    stub = StripeStub().start()
    try:
        stub.remember([failed.body, paid.body])
        status, invoice = _get(stub, f"/v1/invoices/{failed.invoice_id}")
        assert status == 200 and invoice["id"] == failed.invoice_id and invoice["status"] == "paid"

        status, customer = _get(stub, "/v1/customers/cus_never_in_an_event")
        assert status == 200 and (customer["object"], customer["id"]) == ("customer", "cus_never_in_an_event")
        status, subscription = _get(stub, "/v1/subscriptions/sub_abc")
        assert subscription["customer"] == "cus_abc" and subscription["items"]["data"][0]["price"]["unit_amount"] > 0
        assert _get(stub, "/v1/account")[1]["id"] == ACCOUNT_ID

        status, error = _get(stub, "/v1/invoices/in_unknown")  # an invoice is never made up: Stripe would 404
        assert status == 404 and error["error"]["type"] == "invalid_request_error"
        assert stub.reads == {"GET invoices": 1, "GET customers": 1, "GET subscriptions": 1, "GET account": 1,
                              "GET invoices (404)": 1}
    finally:
        stub.stop()


def test_the_stub_sets_tcp_nodelay_on_every_connection_it_accepts():
    """Without it a keep-alive client's next request waits for a delayed ACK (40 ms on Linux)."""
    stub = StripeStub()  # not serving: the test accepts the connection itself
    try:
        client = socket.create_connection(stub.server.server_address, timeout=5)
        accepted, _ = stub.server.get_request()
        try:
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        finally:
            accepted.close()
            client.close()
    finally:
        stub.server.server_close()


def test_the_peer_section_says_how_to_install_dj_stripe_when_it_cannot_run(tmp_path):
    versions, missing = check_peer(tmp_path / "no-such-python", True)
    assert "make bench-peer" in missing and versions == {}
    _, without_djstripe = check_peer(Path(sys.executable), True)  # the service's venv has no dj-stripe
    assert without_djstripe is not None and "not importable" in without_djstripe
    if PEER_VENV_PYTHON.exists():  # installed: it still runs on PostgreSQL only
        versions, reason = check_peer(PEER_VENV_PYTHON, False)
        assert "PostgreSQL" in reason and versions["dj-stripe"]
