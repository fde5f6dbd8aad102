"""The statements and transactions one event costs on PostgreSQL, counted with SQLAlchemy events
(tests/support/sql_capture.py): a change that adds a re-read or a transaction on the hot path fails here.

Measured (issue 17), processing the message the webhook sends (message_args: the event's id and its
customer), then delivering the email it queued (the process_event and send_email actors' functions,
so a lookup made only for log fields counts too); no STRIPE_API_KEY (with one, a plain SELECT of the
event and the Stripe reads come first, outside the handler's transaction):
- invoice.payment_failed opening a case: 10 statements in 1 transaction, delivery 2 in autocommit: 12 in 3,
  the issue's target (before: 11 in 1 and 3 in 2; 17 in 2; earlier 26 in 3, 21 in 2, 16).
  customer FOR SHARE (whole row, kept), the claim UPDATE ... RETURNING (lock, try counted,
  `processed` written, erasure asked), invoice INSERT ... ON CONFLICT, subscription INSERT ... ON
  CONFLICT DO UPDATE RETURNING (locked and kept), account, case (its day-0 step planned into the
  INSERT: no UPDATE of the row just inserted), transition (no case to look for: the invoice was
  inserted by this transaction, its first event here), the account-email lookup (issue 14: an
  unsent email of the same step to join?), the customer's recorded card (the payload names no
  card), the email INSERT. Delivery: one UPDATE ... RETURNING claims a plain due email (the
  erasure, recipient and ended-case checks in its WHERE), one records the send; each commits on its
  own (autocommit: no BEGIN and COMMIT round trips; they were 2 transactions until the seventh pass);
- invoice.paid closing that case: 11 statements in 1 transaction, delivery 2 in autocommit: 13 in 3
  (target 14; before: 19 in 2, delivery 3 in 2; earlier 28 in 3, 24 in 2).
The ceilings below are what the code does now, so the count can only go down.
"""

from __future__ import annotations

import json

from tests.support.dunning import failed, know_owner, paid
from tests.support.helpers import rows
from tests.support.sql_capture import capture

CEILINGS = {  # event type: (statements, transactions, autocommit statements) of processing, then delivery
    "invoice.payment_failed": ((10, 1, 0), (2, 0, 2)),
    "invoice.paid": ((11, 1, 0), (2, 0, 2)),
}


def _process_and_deliver(runtime, evt: dict):
    from handlers.registry import known_types
    from worker.intake.event_store import message_args, parse_envelope, store_event

    envelope = parse_envelope(json.dumps(evt))
    store_event(runtime.db, envelope, known_type=envelope.type in known_types())
    before = {e["id"] for e in rows(runtime, "emails")}
    with capture(runtime.db.engine) as processing:  # the actors' own functions: their log context too
        runtime.actors.process_event.fn(*message_args(envelope))  # the message the webhook sends
    assert {e["id"]: e["status"] for e in rows(runtime, "events")}[envelope.id] == "processed"
    queued = [e["id"] for e in rows(runtime, "emails") if e["id"] not in before]
    assert len(queued) == 1, queued
    with capture(runtime.db.engine) as delivery:
        runtime.actors.send_email.fn(queued[0])
    assert {e["id"]: e["status"] for e in rows(runtime, "emails")}[queued[0]] == "sent"
    return processing, delivery


def _within(got, ceiling, what: str) -> None:
    statements, transactions, autocommit = ceiling
    assert len(got.loose) <= autocommit, f"{what}: statements outside a transaction\n{got.summary()}"
    assert len(got.statements) <= statements and len(got.transactions) <= transactions, \
        f"{what}: more than {statements} statements in {transactions} transactions\n{got.summary()}"


def test_payment_failed_then_paid_stay_within_their_statement_ceilings(make_runtime):
    runtime = make_runtime(db="postgres")
    opening = failed()
    know_owner(runtime, opening)

    processing, delivery = _process_and_deliver(runtime, opening)
    [case] = rows(runtime, "cases")
    assert case["state"] == "failing"
    _within(processing, CEILINGS["invoice.payment_failed"][0], "payment_failed processing")
    _within(delivery, CEILINGS["invoice.payment_failed"][1], "payment_failed delivery")

    closing = paid()
    assert closing["type"] == "invoice.paid"
    processing, delivery = _process_and_deliver(runtime, closing)
    [case] = rows(runtime, "cases")
    assert case["state"] == "recovered"
    _within(processing, CEILINGS["invoice.paid"][0], "paid processing")
    _within(delivery, CEILINGS["invoice.paid"][1], "paid delivery")
