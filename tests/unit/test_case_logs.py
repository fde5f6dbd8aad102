"""Every log line of a case's life carries its invoice, customer and case ids, and never an owner's address."""

from __future__ import annotations

import json

import falcon.testing

from tests.support.dunning import DAY, T0, failed, paid, tick
from tests.support.helpers import drain, post_event, rows
from worker.observe.log_context import ids_from_event_object

IDS = ("invoice_id", "customer_id", "case_id")


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_every_line_about_a_case_names_its_invoice_customer_and_case(make_runtime, capsys, stripe_data):
    from worker.web.app import create_app
    runtime = make_runtime()
    client = falcon.testing.TestClient(create_app(runtime))
    capsys.readouterr()
    post_event(client, failed("in_log_a", created=T0, customer="cus_log_a", subscription="sub_log_a"))
    post_event(client, failed("in_log_b", created=T0 + 5, customer="cus_log_b", subscription="sub_log_b"))
    drain(runtime)
    tick(runtime, T0 + 8 * DAY)  # reminder, disruption warning (a platform notice)
    drain(runtime)
    post_event(client, paid("in_log_a", created=T0 + 9 * DAY, customer="cus_log_a", subscription="sub_log_a"))
    drain(runtime)
    lines = json_lines(capsys.readouterr().err)

    cases = {c["id"]: c for c in rows(runtime, "cases")}
    assert {c["invoice_id"] for c in cases.values()} == {"in_log_a", "in_log_b"}
    about_a_case = [line for line in lines if any(line.get(k) for k in IDS)]
    assert len(about_a_case) >= 8
    for line in about_a_case:
        assert all(line.get(k) for k in IDS), f"{line['event']} lacks {[k for k in IDS if not line.get(k)]}"
        case = cases[line["case_id"]]  # and the three belong together (no leak from another case)
        assert (line["invoice_id"], line["customer_id"]) == (case["invoice_id"], case["customer_id"]), line
    loggers = {line["event"].split(".")[0] for line in about_a_case}
    assert {"case", "event"} <= loggers
    assert "owner@example.com" not in json.dumps(lines)


def test_ids_are_read_from_every_kind_of_event_object():
    assert ids_from_event_object({"object": "invoice", "id": "in_1", "customer": "cus_1",
                                  "subscription": "sub_1"}) == {"invoice_id": "in_1", "customer_id": "cus_1",
                                                                "subscription_id": "sub_1"}
    assert ids_from_event_object({"object": "customer", "id": "cus_2"}) == {"customer_id": "cus_2"}
    assert ids_from_event_object({"object": "subscription", "id": "sub_3", "customer": {"id": "cus_3"}}) == {
        "subscription_id": "sub_3", "customer_id": "cus_3"}
    assert ids_from_event_object({"object": "payment_intent", "id": "pi_4", "invoice": "in_4",
                                  "customer": "cus_4"}) == {"invoice_id": "in_4", "customer_id": "cus_4"}
