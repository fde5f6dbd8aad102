"""Every real Stripe payload in ../shared/stripe-data is accepted, stored and processed or ignored.

Files that share an event id count as one (Stripe would deliver one of them). The `data`-only
captures (pay, stripe-java) are wrapped in an envelope of their event type so every payload shape
reaches its handler too.
"""

from __future__ import annotations

import json
import re


from tests.support.helpers import drain, post_event, rows


def corpus(stripe_data):
    index = json.loads((stripe_data / "INDEX.json").read_text())
    full, data_only = {}, []
    for entry in index:
        if entry["kind"] == "event":
            event = json.loads((stripe_data / entry["file"]).read_text())
            full.setdefault(event["id"], (entry["file"], event))
        elif entry["kind"] == "event.data-only" and entry.get("event_type"):
            data_only.append((entry, json.loads((stripe_data / entry["file"]).read_text())))
    return full, data_only


def test_every_full_event_payload_is_accepted_and_processed_or_ignored(any_runtime, stripe_data):
    import falcon.testing

    from worker.web.app import create_app
    client = falcon.testing.TestClient(create_app(any_runtime))
    full, _ = corpus(stripe_data)
    for event_id, (path, event) in full.items():
        resp = post_event(client, json.dumps(event))
        assert resp.status_code == 200, (path, resp.text)
    drain(any_runtime)
    stored = {r["id"]: r for r in rows(any_runtime, "events")}
    assert set(stored) == set(full)
    problems = {i: (r["status"], r["last_error"]) for i, r in stored.items()
                if r["status"] not in ("processed", "ignored")}
    assert problems == {}


def test_every_data_only_payload_shape_reaches_its_handler_without_error(runtime, client, stripe_data):
    _, data_only = corpus(stripe_data)
    assert data_only
    for n, (entry, data) in enumerate(data_only):
        event_type = re.sub(r"^subscription\.", "customer.subscription.", entry["event_type"].split(" ")[0])
        event = {"id": f"evt_dataonly_{n}", "object": "event", "type": event_type,
                 "created": 1700000000 + n, "livemode": False, "data": data}
        assert post_event(client, event).status_code == 200, entry["file"]
    drain(runtime)
    failed = [(r["id"], r["type"], r["last_error"]) for r in rows(runtime, "events")
              if r["status"] not in ("processed", "ignored")]
    assert failed == []
