"""Capture, from the real code path, the statements each event type costs (a subprocess of the bench).

    python -m bench.floor_capture OUT.json      (DATABASE_URL etc. from the environment)

The service's own code runs in this process on a scratch database: each event is POSTed, signed,
to the real webhook app (falcon's test client: the resource, the store, the enqueue), then every
message it leads to is run by its actor's own function (process_event, then send_email...) until
no message is left, with bench.sql_trace recording every statement, its parameters and its
transaction. The broker is an in-memory one: moving messages is the no-op baseline's business,
the floor is the database work.

Per event type the trace is one template: the ordered transactions of the webhook and of every
actor message. A few ids are recorded so a replay can give each event ids of its own: the
customer key (shared by the customer's events, like the e2e mix's customer pool) and the ids this
run made (event, invoice, case, email, transition...).
"""

from __future__ import annotations

import json
import os
import queue
import sys
import tempfile
import time
from pathlib import Path

from bench.events import EventFactory
from bench.loadgen import Signer
from bench.setup import WEBHOOK_SECRET
from bench.sql_trace import tracing

# The e2e mix's types (bench.events.MIX) and the one the warm-up uses to make its customers.
CAPTURED = ("customer.created", "invoice.payment_failed", "invoice.paid", "customer.updated",
            "payment_method.attached")


def _runtime():
    from config.settings import load_settings
    from worker.queue.broker import make_stub_broker
    from worker.runtime import setup
    env = dict(os.environ)
    env.setdefault("DUNNING_VAR_DIR", tempfile.mkdtemp(prefix="dunning-floor-capture-"))
    env["FIRST_EMAIL_DELAY_SECONDS"] = "0"  # the same statements; the email is due at once
    env.pop("SENDGRID_API_KEY", None)  # the sender's HTTP is not database work: .eml files here
    env["EMAIL_OUTBOX_DIR"] = str(Path(env["DUNNING_VAR_DIR"]) / "outbox")
    settings = load_settings(env)
    return setup(settings, make_stub_broker(), configure_logs=False)


def _drain(runtime, trace) -> list[str]:
    """Run every queued message with its actor's function, in this thread, until none is left."""
    from dramatiq import Message
    broker = runtime.broker
    ran: list[str] = []
    while True:
        found = False
        for name in list(broker.queues):
            q = broker.queues[name]
            while True:
                try:
                    data = q.get_nowait()
                except queue.Empty:
                    break
                q.task_done()
                found = True
                message = Message.decode(data)
                actor = broker.get_actor(message.actor_name)
                with trace.part(message.actor_name):
                    actor.fn(*message.args, **message.kwargs)
                ran.append(message.actor_name)
        if not found:
            return ran


def _post(client, signer: Signer, body: str) -> None:
    raw = body.encode()
    result = client.simulate_post("/webhooks/stripe", body=raw, headers={
        "Content-Type": "application/json", "Stripe-Signature": signer.header(raw)})
    if result.status_code != 200:
        raise RuntimeError(f"webhook answered {result.status_code}: {result.text[:300]}")


def capture(tag: str) -> dict:
    import falcon.testing

    from worker.web.app import create_app

    runtime = _runtime()
    runtime.db.init_schema()
    # The webhook's INSERT runs on the pooled driver connection (Database.insert_new_committed),
    # out of SQLAlchemy's sight: here it takes the Connection path, the same SQL in the same one
    # autocommit statement, so the trace (and the floor that replays it) counts it.
    runtime.db.inserts_on_driver = False
    client = falcon.testing.TestClient(create_app(runtime))
    signer = Signer(WEBHOOK_SECRET)
    factory = EventFactory(f"c{tag}")

    def run(planned, trace=None):
        if trace is None:
            _post(client, signer, planned.body)
            _drain(runtime, _NoTrace())
            return
        with trace.part("webhook"):
            _post(client, signer, planned.body)
        _drain(runtime, trace)

    # Warm-up (not recorded): reflection, pools, templates, caches; every type once.
    warm = factory.new_customer_id()
    run(factory.customer_created(warm))
    failure = factory.payment_failed(warm)
    run(failure)
    run(factory.paid(warm, failure.invoice_id))
    run(factory.customer_updated(warm))
    run(factory.card_attached(warm))

    customer = factory.new_customer_id()
    templates: dict[str, dict] = {}
    with tracing(runtime.db.engine) as trace:
        failure = factory.payment_failed(customer)
        for planned in (factory.customer_created(customer), failure, factory.paid(customer, failure.invoice_id),
                        factory.customer_updated(customer), factory.card_attached(customer)):
            run(planned, trace)
            templates[planned.type] = {"event_id": planned.event_id, "invoice_id": planned.invoice_id,
                                       "transactions": [t.as_json() for t in trace.take()]}
    statuses = _statuses(runtime)
    runtime.db.dispose()
    return {"tag": factory.tag, "customer_key": customer[4:], "templates": templates,
            "mails": len(list(Path(runtime.settings.email_outbox_dir).glob("*.eml"))), "statuses": statuses}


class _NoTrace:
    def part(self, _name):
        import contextlib
        return contextlib.nullcontext()


def _statuses(runtime) -> dict[str, int]:
    from sqlalchemy import func, select
    events = runtime.db.table("events")
    with runtime.db.engine.connect() as conn:
        return {s: n for s, n in conn.execute(select(events.c.status, func.count()).group_by(events.c.status))}


def main(argv: list[str]) -> int:
    out = Path(argv[0])
    tag = argv[1] if len(argv) > 1 else f"{int(time.time()) % 100000:05d}"
    result = capture(tag)
    out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
