"""The platform's side of the contract, tried as the platform's engineers would integrate it.

- every notice verifies with the `standardwebhooks` library (either of two rotated secrets);
- the read-only pull API answers the status the last notice announced, and the exact notices;
- notices that failed past the retry window are pushed again, in order, by
  `dunning notices redeliver`, and the platform's state ends right.
The platform is a real HTTP server in a thread (tests/support/delivery.py); nothing of ours is faked.
"""

from __future__ import annotations

import base64
import json
import threading
from datetime import timedelta

import dramatiq
import falcon.testing
import pytest
from click.testing import CliRunner
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from config.settings import ConfigError, load_settings
from tests.support import dunning as fx
from tests.support.services import base_env
from tests.support.delivery import in_handler, seed_case
from tests.support.fake_receivers import scripted_server
from tests.support.dunning import DAY, T0
from tests.support.helpers import ADMIN_TOKEN, drain, post_event, rows
from worker.delivery import notices as notices_module
from worker.pure.clock import utcnow
from worker.delivery.notices import sweep_notices
from worker.web.app import create_app

NEW_SECRET = "whsec_" + base64.b64encode(b"the-new-platform-signing-key-32b").decode()
OLD_SECRET = "old-plain-platform-secret-0123456789"  # a plain secret: keyed by its UTF-8 bytes
PLATFORM_TOKEN = "platform-api-token-0123456789-abcdef"
ANNOUNCES = {"service.disruption_scheduled": "disruption_scheduled", "service.disrupted": "disrupted",
             "service.restored": "active", "service.disruption_cancelled": "active"}


class Platform:
    """The receiver: keeps every request, answers 500 while `down`, applies what it acknowledged."""

    def __init__(self):
        self.down = False
        self.requests: list[dict] = []
        self.applied: list[dict] = []
        self.status: dict[str, str] = {}
        self.lock = threading.Lock()

    def __call__(self, n, request):
        with self.lock:
            self.requests.append(request)
            if self.down:
                return 500, {}, {"error": "platform down"}
            notice = Webhook(NEW_SECRET).verify(request["raw"], request["headers"])
            if notice["id"] in {a["id"] for a in self.applied}:
                return 200, {}, {"duplicate": True}
            self.applied.append(notice)
            account = notice["subscription"] or notice["customer"]
            self.status[account] = ANNOUNCES[notice["type"]]
        return 200, {}, {"ok": True}


@pytest.fixture
def platform():
    receiver = Platform()
    with scripted_server(receiver) as server:
        receiver.url = server.url
        yield receiver


@pytest.fixture(params=["sqlite", "postgres"])
def service(make_runtime, platform, request):
    runtime = make_runtime(db=request.param, PLATFORM_WEBHOOK_URL=f"{platform.url}/hooks/dunning",
                           PLATFORM_WEBHOOK_SECRET=f"{NEW_SECRET},{OLD_SECRET}",
                           PLATFORM_API_TOKEN=PLATFORM_TOKEN)
    return runtime, falcon.testing.TestClient(create_app(runtime))


def step(runtime, client, evt=None, tick=None) -> None:
    """One phase of the run: an event and/or a scheduler tick, then every sender (notices too)."""
    if evt is not None:
        fx.know_owner(runtime, evt)  # mail goes to the owner of record only (issue 12): the customer is known first
        assert post_event(client, evt).status_code == 200
    if tick is not None:
        fx.drain_queues(runtime, ("events", "steps"))
        fx.tick(runtime, tick)
    drain(runtime)


def pull(client, path: str, token: str | None = PLATFORM_TOKEN, **params):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.simulate_get(path, headers=headers, params=params or None)


# -- 1. Standard Webhooks on every notice ---------------------------------------------------------
def test_every_notice_of_a_full_run_verifies_with_standardwebhooks_under_either_secret(service, platform):
    runtime, client = service
    phases = [dict(evt=fx.failed()), dict(tick=T0 + 7 * DAY), dict(tick=T0 + 14 * DAY),
              dict(evt=fx.paid(created=T0 + 15 * DAY))]
    announced = []
    for phase in phases:
        step(runtime, client, **phase)
        if platform.applied:
            announced.append(platform.applied[-1]["type"])
            # the pull API answers the status the last notice announced
            answer = pull(client, "/platform/accounts/sub_test_1")
            assert answer.status_code == 200
            assert answer.json["status"] == ANNOUNCES[platform.applied[-1]["type"]]
            assert answer.json["last_notice_seq"] == len(platform.applied)
    assert [n["type"] for n in platform.applied] == ["service.disruption_scheduled", "service.disrupted",
                                                     "service.restored"]
    assert announced == ["service.disruption_scheduled", "service.disrupted", "service.restored"]
    assert len(platform.requests) == 3
    from jsonschema import Draft202012Validator

    from worker.web.openapi import PATH
    components = json.loads(PATH.read_text())["components"]
    notice_schema = Draft202012Validator({"$ref": "#/components/schemas/Notice", "components": components})

    for request in platform.requests:
        raw = request["raw"]
        headers = {k.lower(): v for k, v in request["headers"].items()}  # HTTP names are case-blind
        body = json.loads(raw)
        assert headers["webhook-id"] == body["id"]
        notice_schema.validate(body)  # the body the OpenAPI document's webhooks section describes
        assert len(headers["webhook-signature"].split(" ")) == 2  # one signature per secret
        for verifier in (Webhook(NEW_SECRET), Webhook(OLD_SECRET.encode())):
            assert verifier.verify(raw, headers) == body
        # one byte changed does not verify
        tampered = raw.replace(b'"type"', b'"typE"', 1)
        with pytest.raises(WebhookVerificationError):
            Webhook(NEW_SECRET).verify(tampered, headers)
        other = "whsec_" + base64.b64encode(b"someone-else-s-key-0123456789012").decode()
        with pytest.raises(WebhookVerificationError):
            Webhook(other).verify(raw, headers)
        # the Stripe-style header is still there, keyed by the whole secret strings
        from worker.intake.signatures import verify_stripe_signature
        verify_stripe_signature(raw.decode(), headers["dunning-signature"], (OLD_SECRET,))
        verify_stripe_signature(raw.decode(), headers["dunning-signature"], (NEW_SECRET,))


def test_the_notice_file_outbox_carries_the_standard_headers_too(make_runtime):
    secret = "plain-secret-for-the-file-outbox-0123"
    runtime = make_runtime(PLATFORM_WEBHOOK_SECRET=secret)
    ids = seed_case(runtime)
    notice_id = in_handler(runtime, lambda ctx: ctx.effects.notice(
         ctx, "service.disrupted", ids["account_id"], "k1", case_id=ids["case_id"], invoice_id=ids["invoice_id"],
         customer_id=ids["customer_id"], subscription_id=ids["subscription_id"], disrupt_at=None))
    drain(runtime)
    record = json.loads((runtime.settings.notice_outbox_dir / f"{notice_id}.json").read_text())
    assert Webhook(secret.encode()).verify(record["body"], record["headers"])["id"] == notice_id
    assert record["headers"]["webhook-id"] == notice_id


# -- 2. the pull API ---------------------------------------------------------------------------------
def test_the_notice_feed_returns_exactly_the_notices_pushed_in_order(service, platform):
    runtime, client = service
    for phase in (dict(evt=fx.failed()), dict(tick=T0 + 7 * DAY), dict(tick=T0 + 14 * DAY),
                  dict(evt=fx.paid(created=T0 + 15 * DAY))):
        step(runtime, client, **phase)
    pushed = [r["raw"].decode() for r in platform.requests]
    feed = pull(client, "/platform/accounts/sub_test_1/notices").json
    assert [n["body"] for n in feed["data"]] == pushed
    assert [n["seq"] for n in feed["data"]] == [1, 2, 3]
    assert {n["delivery_status"] for n in feed["data"]} == {"sent"}
    assert [n["notice"] for n in feed["data"]] == [json.loads(b) for b in pushed]
    assert (feed["has_more"], feed["next_after"]) == (False, None)
    # page by page with `after`
    seen, after = [], 0
    while True:
        page = pull(client, "/platform/accounts/sub_test_1/notices", after=after, limit=1).json
        seen += [n["body"] for n in page["data"]]
        if not page["has_more"]:
            break
        after = page["next_after"]
    assert seen == pushed
    assert pull(client, "/platform/accounts/sub_test_1/notices", after=3).json["data"] == []


def test_the_account_shows_its_open_invoices_and_dates(service, platform):
    runtime, client = service
    step(runtime, client, evt=fx.failed(amount=4200, currency="eur"))
    step(runtime, client, tick=T0 + 7 * DAY)
    account = pull(client, "/platform/accounts/sub_test_1").json
    assert account["status"] == "disruption_scheduled" and account["customer"] == "cus_test_1"
    assert account["disrupt_at"] == T0 + 14 * DAY and account["disrupted_at"] is None
    assert account["open_invoices"] == [{"invoice": "in_test_1", "amount_due": 4200, "currency": "eur",
                                         "case_state": "disruption_scheduled", "disrupt_at": T0 + 14 * DAY}]
    assert account["last_notice_seq"] == 1


def test_the_accounts_list_pages_by_a_stable_cursor_and_filters_by_status(make_runtime):
    runtime = make_runtime(PLATFORM_API_TOKEN=PLATFORM_TOKEN)
    client = falcon.testing.TestClient(create_app(runtime))
    accounts = runtime.db.table("accounts")
    with runtime.db.transaction() as conn:
        for i in range(7):
            conn.execute(accounts.insert().values(
                id=f"sub_{i:02d}", customer_id=f"cus_{i}", subscription_id=f"sub_{i:02d}",
                status="disrupted" if i % 3 == 0 else "active", notice_seq=i, updated_at=utcnow()))
    seen, cursor = [], None
    while True:
        page = pull(client, "/platform/accounts", limit=3, **({"cursor": cursor} if cursor else {})).json
        seen += [a["id"] for a in page["data"]]
        if cursor is None:  # a row added behind the cursor neither repeats nor shifts the sweep
            with runtime.db.transaction() as conn:
                conn.execute(accounts.insert().values(id="sub_00a", customer_id="cus_x", status="active",
                                                      notice_seq=0, updated_at=utcnow()))
        if not page["has_more"]:
            assert page["next_cursor"] is None
            break
        cursor = page["next_cursor"]
    assert seen == [f"sub_{i:02d}" for i in range(7)]
    disrupted = pull(client, "/platform/accounts", status="disrupted").json["data"]
    assert [a["id"] for a in disrupted] == ["sub_00", "sub_03", "sub_06"]
    assert pull(client, "/platform/accounts", status="active", limit=500).status_code == 200


@pytest.mark.parametrize("path,params,fragment", [
    ("/platform/accounts", {"limit": "501"}, "limit"),
    ("/platform/accounts", {"limit": "0"}, "limit"),
    ("/platform/accounts", {"limit": "ten"}, "limit"),
    ("/platform/accounts", {"cursor": "not-a-cursor!"}, "cursor"),
    ("/platform/accounts", {"cursor": base64.urlsafe_b64encode(b"sub_1").decode()}, "cursor"),
    ("/platform/accounts", {"status": "paused"}, "status"),
    ("/platform/accounts/sub_test_1/notices", {"after": "-1"}, "after"),
    ("/platform/accounts/sub_test_1/notices", {"limit": "1000"}, "limit"),
])
def test_bad_parameters_are_a_400_with_a_json_error(make_runtime, path, params, fragment):
    runtime = make_runtime(PLATFORM_API_TOKEN=PLATFORM_TOKEN)
    seed_case(runtime)
    in_handler(runtime, lambda ctx: ctx.effects.notice(
         ctx, "service.disrupted", "sub_test_1", "k1", case_id="dc_test_1", invoice_id="in_test_1",
         customer_id="cus_test_1", subscription_id="sub_test_1", disrupt_at=None))
    answer = pull(falcon.testing.TestClient(create_app(runtime)), path, **params)
    assert answer.status_code == 400
    assert fragment in answer.json["error"]


def test_tokens_unknown_ids_and_the_platform_token_on_acting_routes(make_runtime):
    runtime = make_runtime(PLATFORM_API_TOKEN=PLATFORM_TOKEN)
    ids = seed_case(runtime)
    in_handler(runtime, lambda ctx: ctx.effects.notice(
         ctx, "service.disrupted", ids["account_id"], "k1", case_id=ids["case_id"], invoice_id=ids["invoice_id"],
         customer_id=ids["customer_id"], subscription_id=ids["subscription_id"], disrupt_at=None))
    client = falcon.testing.TestClient(create_app(runtime))
    for path in ("/platform/accounts/sub_test_1", "/platform/accounts", "/platform/accounts/sub_test_1/notices"):
        for token in (None, "wrong-token-0123456789-abcdefgh", ADMIN_TOKEN, PLATFORM_TOKEN + "x"):
            answer = pull(client, path, token=token)
            assert answer.status_code == 401, (path, token)
            assert answer.json == {"error": "missing or wrong platform token"}
            assert answer.headers["www-authenticate"].startswith("Bearer")
        assert pull(client, path).status_code == 200
    assert pull(client, "/platform/accounts/sub_nope").status_code == 404
    assert "sub_nope" in pull(client, "/platform/accounts/sub_nope").json["error"]
    assert pull(client, "/platform/accounts/sub_nope/notices").status_code == 404
    # the platform token never acts
    link = client.simulate_post("/payment-links", json={"invoice": "in_test_1"},
                                headers={"Authorization": f"Bearer {PLATFORM_TOKEN}"})
    assert link.status_code in (401, 403)
    assert rows(runtime, "payment_links") == []
    assert client.simulate_post("/platform/accounts/sub_test_1",
                                headers={"Authorization": f"Bearer {PLATFORM_TOKEN}"}).status_code == 405


def test_without_a_platform_token_configured_the_pull_api_refuses_everyone(runtime, client):
    assert runtime.settings.platform_api_token is None
    for token in (None, "", ADMIN_TOKEN):
        assert pull(client, "/platform/accounts", token=token).status_code == 401


# -- 3. no notice is lost for good ------------------------------------------------------------------
class Clock:
    """The clock the delivery reads (worker.delivery.notices.utcnow), moved forward by the test."""

    def __init__(self):
        self.now = utcnow()

    def __call__(self):
        return self.now


def cli(runtime, *args) -> dict:
    """`dunning ARGS --json` in this process (the CLI finds this test's runtime, as a worker's would)."""
    from worker import runtime as rt
    from worker.cli import main
    s = runtime.settings
    env = {"STRIPE_WEBHOOK_SECRET": ",".join(s.stripe_webhook_secrets), "ADMIN_TOKEN": s.admin_token,
           "DATABASE_URL": s.database_url, "DUNNING_VAR_DIR": str(s.var_dir), "LOG_FORMAT": "json",
           "DUNNING_POLICY": str(s.dunning_policy), "QUEUE_NAMESPACE": s.queue_namespace}
    try:
        result = CliRunner().invoke(main, [*args, "--json"], env=env, catch_exceptions=False)
    finally:
        rt._current = runtime
        dramatiq.set_broker(runtime.broker)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_notices_failed_past_the_retry_window_are_redelivered_in_order(service, platform, monkeypatch):
    runtime, client = service
    clock = Clock()
    monkeypatch.setattr(notices_module, "utcnow", clock)
    platform.down = True
    for phase in (dict(evt=fx.failed()), dict(tick=T0 + 7 * DAY), dict(tick=T0 + 14 * DAY),
                  dict(evt=fx.paid(created=T0 + 15 * DAY))):
        step(runtime, client, **phase)

    # the platform answers 500 for days: each notice in turn is retried, then given up
    worker = dramatiq.Worker(runtime.broker, queues={"notices"}, worker_threads=2, worker_timeout=10)
    worker.start()
    try:
        for _ in range(100):
            if all(r["status"] == "failed" for r in rows(runtime, "platform_notices")):
                break
            clock.now += timedelta(hours=6)
            sweep_notices(runtime, clock.now)
            runtime.broker.join("notices", timeout=30_000)
    finally:
        worker.stop()
    failed = sorted(rows(runtime, "platform_notices"), key=lambda r: r["seq"])
    assert [r["status"] for r in failed] == ["failed"] * 3
    assert all(r["attempts"] >= notices_module.MIN_ATTEMPTS and "500" in r["last_error"] for r in failed)
    assert platform.applied == [] and len(platform.requests) >= 60
    stats = cli(runtime, "stats")
    assert stats["notices_failed"] == 3 and [n["seq"] for n in stats["failed_notices"]] == [1, 2, 3]
    from worker.observe import metrics
    scraped = metrics.render(runtime)[0].decode()
    assert 'dunning_platform_notices_failed{type="service.disrupted"} 1.0' in scraped

    platform.down = False
    done = cli(runtime, "notices", "redeliver", "--failed")
    assert [r["seq"] for r in done["redelivered"]] == [1, 2, 3] and done["superseded"] == []
    drain(runtime)
    assert [n["id"] for n in platform.applied] == [r["id"] for r in failed]
    assert [n["type"] for n in platform.applied] == ["service.disruption_scheduled", "service.disrupted",
                                                     "service.restored"]
    assert platform.status == {"sub_test_1": "active"} == {"sub_test_1": rows(runtime, "accounts")[0]["status"]}
    assert cli(runtime, "stats")["notices_failed"] == 0


def test_redeliver_skips_a_failed_notice_a_later_delivered_one_superseded(make_runtime, platform):
    runtime = make_runtime(PLATFORM_WEBHOOK_URL=platform.url, PLATFORM_WEBHOOK_SECRET=NEW_SECRET)
    ids = seed_case(runtime)
    other = seed_case(runtime, case_id="dc_2", invoice_id="in_2", customer_id="cus_2", subscription_id="sub_2")
    made = {}
    for account in (ids, other):
        for kind in ("service.disruption_scheduled", "service.disrupted", "service.restored"):
            made[(account["account_id"], kind)] = in_handler(runtime, lambda ctx, a=account, k=kind: ctx.effects.notice(
                 ctx, k, a["account_id"], f"{a['account_id']}:{k}", case_id=a["case_id"], invoice_id=a["invoice_id"],
                 customer_id=a["customer_id"], subscription_id=a["subscription_id"], disrupt_at=None))
    runtime.broker.flush_all()
    table = runtime.db.table("platform_notices")
    with runtime.db.transaction() as conn:  # sub_test_1: the disrupted notice failed, the restore got through
        conn.execute(table.update().values(status="sent"))
        conn.execute(table.update().where(table.c.id == made[("sub_test_1", "service.disrupted")])
                     .values(status="failed"))
        conn.execute(table.update().where(table.c.id.in_([made[("sub_2", "service.disrupted")],
                                                          made[("sub_2", "service.restored")]]))
                     .values(status="failed"))
    done = cli(runtime, "notices", "redeliver", "--account", "sub_test_1")
    assert done["redelivered"] == [] and [r["type"] for r in done["superseded"]] == ["service.disrupted"]
    assert rows(runtime, "platform_notices", id=made[("sub_test_1", "service.disrupted")])[0]["status"] == "failed"
    done = cli(runtime, "notices", "redeliver", "--account", "sub_2")
    assert [r["type"] for r in done["redelivered"]] == ["service.disrupted", "service.restored"]
    drain(runtime)
    assert [n["type"] for n in platform.applied] == ["service.disrupted", "service.restored"]
    assert platform.status == {"sub_2": "active"}


def test_redeliver_needs_exactly_one_of_account_or_failed(runtime):
    from worker.cli import main
    assert CliRunner().invoke(main, ["notices", "redeliver"]).exit_code == 2
    assert CliRunner().invoke(main, ["notices", "redeliver", "--failed", "--account", "x"]).exit_code == 2


# -- configuration ------------------------------------------------------------------------------------
def test_a_whsec_secret_that_is_not_base64_stops_start_up_with_one_line_naming_the_variable(tmp_path):
    from worker.cli import main
    env = base_env(tmp_path, PLATFORM_WEBHOOK_SECRET="whsec_not*base64!")
    with pytest.raises(ConfigError, match="^PLATFORM_WEBHOOK_SECRET"):
        load_settings(env)
    from worker import runtime as rt
    saved = rt._current
    rt._current = None
    try:
        result = CliRunner().invoke(main, ["stats", "--json"], env=env)
    finally:
        rt._current = saved
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1 and "PLATFORM_WEBHOOK_SECRET" in result.output


def test_secrets_and_the_platform_token_are_checked_at_start_up(tmp_path):
    good = load_settings(base_env(tmp_path, PLATFORM_WEBHOOK_SECRET=f" {NEW_SECRET} , {OLD_SECRET} "))
    assert good.platform_webhook_secrets == (NEW_SECRET, OLD_SECRET)
    assert good.platform_webhook_secret == NEW_SECRET
    unpadded = NEW_SECRET.rstrip("=")
    assert unpadded != NEW_SECRET
    assert load_settings(base_env(tmp_path, PLATFORM_WEBHOOK_SECRET=unpadded)).platform_webhook_secrets
    for bad in ("whsec_", "whsec_abcde", "plain,whsec_***"):
        with pytest.raises(ConfigError, match="PLATFORM_WEBHOOK_SECRET"):
            load_settings(base_env(tmp_path, PLATFORM_WEBHOOK_SECRET=bad))
    with pytest.raises(ConfigError, match="PLATFORM_API_TOKEN"):
        load_settings(base_env(tmp_path, PLATFORM_API_TOKEN="short-token"))
    with pytest.raises(ConfigError, match="PLATFORM_API_TOKEN"):
        load_settings(base_env(tmp_path, PLATFORM_API_TOKEN=ADMIN_TOKEN))


def test_signing_follows_the_specification_byte_for_byte():
    """The specification's own test vector (standard-webhooks/spec, and its libraries' tests)."""
    from worker.pure import standard_webhooks
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    msg_id, timestamp = "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330
    body = '{"test": 2432232314}'
    assert standard_webhooks.signature(msg_id, timestamp, body, secret) == \
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_the_platform_token_opens_neither_the_dashboard_nor_the_admin_api_of_the_whole_web_app(make_runtime):
    """The whole WSGI app of the web process (Falcon + the mounted dashboard), on a real broker."""
    from werkzeug.test import Client

    from tests.support.services import redis_reachable
    from worker.web.app import wsgi_app
    runtime = make_runtime(broker="redis" if redis_reachable() else "embedded", PLATFORM_API_TOKEN=PLATFORM_TOKEN)
    app = Client(wsgi_app(runtime))
    as_platform = {"Authorization": f"Bearer {PLATFORM_TOKEN}"}
    assert app.get("/dashboard/", headers=as_platform).status_code == 401
    basic = "Basic " + base64.b64encode(f"platform:{PLATFORM_TOKEN}".encode()).decode()
    assert app.get("/dashboard/", headers={"Authorization": basic}).status_code == 401
    assert app.post("/payment-links", json={"invoice": "in_x"}, headers=as_platform).status_code == 401
    assert app.get("/platform/accounts", headers=as_platform).status_code == 200
    assert app.get("/dashboard/", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).status_code == 200


# -- the platform's app id reaches the notice even when no subscription event was received -------
def test_a_notice_carries_the_subscription_metadata_the_invoice_gave_when_no_subscription_event_came(any_runtime):
    inv = fx.invoice("in_test_1", next_payment_attempt=T0 + 3 * DAY)
    inv["parent"]["subscription_details"]["metadata"] = {"app_id": "app_42"}
    fx.deliver(any_runtime, fx.event("invoice.payment_failed", inv, T0))
    fx.tick(any_runtime, T0 + 7 * DAY)

    (notice,) = rows(any_runtime, "platform_notices")
    body = json.loads(notice["body"])
    assert body["type"] == "service.disruption_scheduled"
    assert body["metadata"].get("app_id") == "app_42"
