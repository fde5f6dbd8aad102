"""The front door (issue 13): malformed input never reaches a 500, bodies are read whatever their
framing, /metrics is cheap and closed, careless configuration is refused, links stay on Stripe.

The stalled-connection and chunked-body acceptance tests run against the real web process
(tests/support/processes.py) and are in the slow suite.
"""

from __future__ import annotations

import io
import json
import time

import falcon.testing
import pytest

from config.settings import ConfigError, load_settings
from tests.support.services import base_env
from tests.support.helpers import ADMIN_TOKEN, WEBHOOK_SECRET, drain, make_event, rows, signed_headers
from worker.web.app import create_app

NOW = int(time.time())


def _event(event_id: str = "evt_front_1", **changes) -> dict:
    obj = {"id": "in_front_1", "object": "invoice", "customer": "cus_front_1", "status": "open",
           "currency": "usd", "amount_due": 2500, "amount_remaining": 2500, "attempt_count": 1,
           "customer_email": "owner@example.com", "number": "INV-FRONT"}
    event = make_event("invoice.payment_failed", obj, event_id=event_id, created=NOW)
    event.update(changes)
    return event


BODY = json.dumps(_event())


def _sig(value: str) -> dict:
    return {"Content-Type": "application/json", "Stripe-Signature": value}


def _signed(body: str) -> dict:
    return signed_headers(body)


def _mac(body: str = BODY) -> str:
    return signed_headers(body)["Stripe-Signature"].split("v1=", 1)[1]


# t= values that are not a Unix time in ASCII digits, each sent with the body's right v1
BAD_TIMESTAMPS = [
    ("t in superscript digits", "\u00b2\u00b3"),
    ("t of 4,400 digits", "9" * 4400),
    ("t in Arabic-Indic digits", "\u0663\u0664"),
    ("t in full-width digits", "\uff11\uff12"),
    ("t in exponent form", "1e9"),
    ("t negative", "-5"),
    ("t empty", ""),
    ("t with a plus sign", f"+{NOW}"),
    ("t in hex", "0x10"),
    ("t with 13 digits", f"1{NOW:012d}"),
    ("t with underscores", "1_700_000_000"),
]

# (name, Stripe-Signature header, expected status)
SIGNATURES = [(name, f"t={t},v1={_mac()}", 400) for name, t in BAD_TIMESTAMPS] + [
    ("v1 not hex", f"t={NOW},v1=zzzz", 400),
    ("v1 non-ASCII", f"t={NOW},v1=\u00e9\u00e9\u00e9", 400),
    ("v1 empty", f"t={NOW},v1=", 400),
    ("only commas", ",,,,,", 400),
    ("only equals signs", "=,=,=", 400),
    ("t without a value", f"t,v1={_mac()}", 400),
    ("a hundred v1 entries", f"t={NOW}," + ",".join(["v1=" + "0" * 64] * 100), 400),
    ("t and v1 swapped", f"v1={NOW},t={_mac()}", 400),
    ("semicolons instead of commas", f"t={NOW};v1={_mac()}", 400),
]

SIGNED_IMPOSSIBLE = [
    ("created 2^63", _event(created=2 ** 63), 400),
    ("created 10^20", _event(created=10 ** 20), 400),
    ("created after year 9999", _event(created=253402300800), 400),
    ("id with a lone surrogate", _event(id="evt_\ud800x"), 400),
    ("type with a lone surrogate", _event(type="invoice.\udfff"), 400),
    ("type with a NUL", _event(type="invoice.payment_failed\u0000"), 400),
    ("api_version with a NUL: stored cleaned", _event("evt_front_apiv", api_version="2025\u0000x"), 200),
    ("api_version of 10,000 characters: stored clipped", _event("evt_front_apiv_long", api_version="v" * 10_000), 200),
]

# (gunicorn itself answers 400 to a Content-Length that is not a number: the app never sees one)
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"}
HEADERS = [
    ("Content-Length of 20 digits", "/webhooks/stripe", {**_signed(BODY), "Content-Length": "9" * 20}, 413),
    ("Idempotency-Key of 300 characters", "/payment-links", {**ADMIN, "Idempotency-Key": "k" * 300}, 400),
    ("admin token with non-ASCII characters", "/payment-links", {"Authorization": "Bearer \u00e9" * 30}, 401),
    ("admin token in a basic header that is not base64", "/payment-links", {"Authorization": "Basic \u00e9=="}, 401),
    ("signature header twice as long as allowed", "/webhooks/stripe", _sig("t=1," + "v1=00," * 3000), 400),
]

QUERIES = [  # the dashboard (behind the admin token): malformed queries are 400, never 500
    ("cursor not a number", "/dashboard/queues/events", "cursor=abc"),
    ("cursor negative", "/dashboard/queues/events", "cursor=-1"),
    ("cursor in exponent form", "/dashboard/queues/events", "cursor=1e3"),
    ("cursor of 30 digits", "/dashboard/queues/events", "cursor=" + "9" * 30),
    ("cursor with a NUL", "/dashboard/queues/events", "cursor=%00"),
    ("cursor in Arabic-Indic digits", "/dashboard/queues/events", "cursor=%D9%A3"),
    ("a good cursor, then a bad one", "/dashboard/queues/events", "cursor=1&cursor=abc"),
    ("cursor on the failed tab", "/dashboard/queues/events/failed", "cursor=x"),
    ("cursor not UTF-8", "/dashboard/queues/events", "cursor=%ff%fe"),
]

FORMS = [  # dashboard POSTs that its int(Content-Length) and form["id"] turned into 500s
    ("requeue without a body", "/dashboard/requeue-message", b"", {}),
    ("delete without an id", "/dashboard/delete-message", b"queue=events", {}),
    ("requeue with a body not UTF-8", "/dashboard/requeue-message", b"id=\xff\xfe", {}),
    ("delete with a Content-Length over 16 KiB", "/dashboard/delete-message", b"id=1",
     {"Content-Length": str(10 ** 9)}),
]


def test_the_catalogue_has_at_least_forty_cases():
    assert len(SIGNATURES) + len(SIGNED_IMPOSSIBLE) + len(HEADERS) + len(QUERIES) + len(FORMS) >= 40


@pytest.fixture
def front(make_runtime, capsys):
    """The whole web app (dashboard mounted) on a real Redis broker, built in the test so that
    its logs go to capsys."""
    from worker.web.ops import mount_operator_apps

    def build():
        runtime = make_runtime(broker="redis")
        return falcon.testing.TestClient(mount_operator_apps(create_app(runtime), runtime)), runtime, capsys
    return build


def _no_traceback(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err and "unhandled_error" not in err, err[-3000:]


@pytest.mark.parametrize("name, header, status", SIGNATURES, ids=[s[0] for s in SIGNATURES])
def test_a_malformed_signature_is_a_400_with_a_reason_and_no_traceback(front, name, header, status):
    client, runtime, capsys = front()
    resp = client.simulate_post("/webhooks/stripe", body=BODY, headers=_sig(header))
    assert resp.status_code == status, resp.text
    assert "signature" in resp.json["error"]
    assert rows(runtime, "events") == []
    _no_traceback(capsys)


@pytest.mark.parametrize("name, event, status", SIGNED_IMPOSSIBLE, ids=[s[0] for s in SIGNED_IMPOSSIBLE])
def test_a_signed_impossible_value_is_a_4xx_or_stored_cleanly_never_a_500(front, name, event, status):
    client, runtime, capsys = front()
    body = json.dumps(event)
    resp = client.simulate_post("/webhooks/stripe", body=body, headers=_signed(body))
    assert resp.status_code == status, resp.text
    stored = rows(runtime, "events")
    assert len(stored) == (1 if status == 200 else 0)
    for row in stored:
        assert "\x00" not in (row["api_version"] or "") and len(row["api_version"] or "") <= 64
    _no_traceback(capsys)


@pytest.mark.parametrize("name, path, headers, status", HEADERS, ids=[h[0] for h in HEADERS])
def test_a_malformed_header_is_a_4xx(front, name, path, headers, status):
    client, runtime, capsys = front()
    body = BODY if path == "/webhooks/stripe" else json.dumps({"invoice": "in_front_1"})
    resp = client.simulate_post(path, body=body, headers=headers)
    assert resp.status_code == status, resp.text
    assert rows(runtime, "events") == [] and rows(runtime, "payment_links") == []
    _no_traceback(capsys)


@pytest.mark.parametrize("name, path, query", QUERIES, ids=[q[0] for q in QUERIES])
def test_a_malformed_dashboard_query_is_a_400(front, name, path, query):
    client, _runtime, capsys = front()
    resp = client.simulate_get(path, query_string=query, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert resp.status_code == 400, resp.text
    assert client.simulate_get(path, query_string="cursor=0", headers={
        "Authorization": f"Bearer {ADMIN_TOKEN}"}).status_code == 200
    _no_traceback(capsys)


@pytest.mark.parametrize("name, path, body, headers", FORMS, ids=[f[0] for f in FORMS])
def test_a_malformed_dashboard_form_is_a_400(front, name, path, body, headers):
    client, _runtime, capsys = front()
    resp = client.simulate_post(path, body=body, headers={
        "Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/x-www-form-urlencoded", **headers})
    assert resp.status_code == 400, resp.text
    _no_traceback(capsys)


def test_dashboard_responses_forbid_framing_and_carry_a_csp_and_samesite_cookies(front):
    client, _runtime, _capsys = front()
    for headers in ({}, {"Authorization": f"Bearer {ADMIN_TOKEN}"}):
        resp = client.simulate_get("/dashboard/queues/events", headers=headers)
        assert resp.headers["X-Frame-Options"] == "DENY"
        csp = resp.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp and "script-src" not in csp
    cookies = [v for k, v in resp.headers.items() if k.lower() == "set-cookie"] or \
        resp.headers.get("set-cookie", "").split("\n")
    assert cookies and all("SameSite=Strict" in c for c in cookies if c), cookies


# -- request bodies: Content-Length or chunked ---------------------------------------------------

def _chunked_request(body: bytes, path: str = "/webhooks/stripe", headers: dict | None = None):
    """A WSGI environ as a server passes a chunked request: no CONTENT_LENGTH, the body de-chunked."""
    environ = falcon.testing.create_environ(path=path, method="POST", headers=headers or {})
    environ.pop("CONTENT_LENGTH", None)
    environ["HTTP_TRANSFER_ENCODING"] = "chunked"
    environ["wsgi.input"] = io.BytesIO(body)
    return environ


def _call(app, environ):
    result = {}

    def start_response(status, headers, exc_info=None):
        result["status"], result["headers"] = status, headers
    body = b"".join(app(environ, start_response))
    return int(result["status"].split()[0]), body


def test_a_chunked_webhook_is_read_stored_and_processed(any_runtime):
    app = create_app(any_runtime)
    body = json.dumps(_event("evt_front_chunked"))
    status, answer = _call(app, _chunked_request(body.encode(), headers=_signed(body)))
    assert status == 200, answer
    drain(any_runtime)
    (row,) = rows(any_runtime, "events")
    assert row["id"] == "evt_front_chunked" and row["status"] == "processed"


def test_a_chunked_body_over_the_limit_is_413_while_reading(runtime):
    app = create_app(runtime)
    status, answer = _call(app, _chunked_request(b"x" * (2 * 1024 * 1024), headers=_signed("x")))
    assert status == 413, answer
    status, _ = _call(app, _chunked_request(b'{"invoice": "' + b"x" * 20_000 + b'"}', path="/payment-links",
                                            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}))
    assert status == 413
    assert rows(runtime, "events") == [] and rows(runtime, "payment_links") == []


def test_the_server_framing_finds_the_end_of_length_and_chunked_requests():
    from worker.web.server import BodyTooLarge, IncompleteFraming, request_end
    head = b"POST / HTTP/1.1\r\nHost: x\r\n"
    whole = head + b"Content-Length: 5\r\n\r\nhello"
    assert request_end(whole + b"GET / HTTP/1.1\r\n") == len(whole)
    chunked = head + b"Transfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n"
    assert request_end(chunked) == len(chunked)
    for partial in (whole[:-1], chunked[:-2], head, head + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhel"):
        with pytest.raises(IncompleteFraming):
            request_end(partial)
    with pytest.raises(BodyTooLarge):
        request_end(head + b"Content-Length: 2000000\r\n\r\n")
    with pytest.raises(BodyTooLarge):
        request_end(head + b"Transfer-Encoding: chunked\r\n\r\n" + b"100001\r\n" + b"x" * 100)
    # Malformed framing ends at the head: gunicorn's parser answers 400 without waiting for more.
    bad = head + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\n"
    assert request_end(bad) == len(bad)


# -- NUL and other characters PostgreSQL cannot store -------------------------------------------

def test_nul_and_lone_surrogates_in_an_event_are_handled_alike_on_both_databases(any_runtime):
    from worker.web.app import create_app as app_for
    client = falcon.testing.TestClient(app_for(any_runtime))
    customer = {"id": "cus_nul", "object": "customer", "email": "owner@example.com",
                "name": "Ada\u0000 Love\ud800lace", "metadata": {"k\u0000": "v\u0000"}}
    body = json.dumps(make_event("customer.updated", customer, event_id="evt_front_nul", created=NOW))
    assert client.simulate_post("/webhooks/stripe", body=body, headers=_signed(body)).status_code == 200
    failed = json.dumps(_event("evt_front_nul_invoice", data={"object": {
        **_event()["data"]["object"], "number": "INV\u0000-1", "customer_email": "owner@example.com"}}))
    assert client.simulate_post("/webhooks/stripe", body=failed, headers=_signed(failed)).status_code == 200
    drain(any_runtime)
    statuses = {r["id"]: r["status"] for r in rows(any_runtime, "events")}
    assert statuses == {"evt_front_nul": "processed", "evt_front_nul_invoice": "processed"}, \
        [(r["id"], r["last_error"]) for r in rows(any_runtime, "events")]
    (cust,) = rows(any_runtime, "customers", id="cus_nul")
    assert cust["name"] == "Ada\ufffd Love\ufffdlace"


# -- /metrics ------------------------------------------------------------------------------------

def test_metrics_needs_the_token_when_set_and_a_loopback_peer_when_not(make_runtime):
    token = "metrics-token-0123456789abcdef"
    client = falcon.testing.TestClient(create_app(make_runtime(METRICS_TOKEN=token)))
    assert client.simulate_get("/metrics").status_code == 401
    assert client.simulate_get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.simulate_get("/metrics", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    open_client = falcon.testing.TestClient(create_app(make_runtime()))
    assert open_client.simulate_get("/metrics").status_code == 200  # the test client is 127.0.0.1
    assert open_client.simulate_get("/metrics", remote_addr="203.0.113.9").status_code == 403


def test_metrics_serve_a_snapshot_refreshed_at_most_once_per_interval(make_runtime):
    from sqlalchemy import event as sa_event
    runtime = make_runtime(METRICS_REFRESH_SECONDS="3600")
    client = falcon.testing.TestClient(create_app(runtime))
    statements = []
    sa_event.listen(runtime.db.engine, "before_cursor_execute",
                    lambda *args: statements.append(args[2]) if "GROUP BY" in args[2] else None)
    from tests.support.helpers import wait_until
    wait_until(lambda: "dunning_metrics_snapshot_age_seconds -1" not in client.simulate_get("/metrics").text,
               timeout=20, message="the first snapshot")
    first = len(statements)
    for _ in range(20):
        assert client.simulate_get("/metrics").status_code == 200
    assert len(statements) == first, "scrapes ran the domain queries again"
    text = client.simulate_get("/metrics").text
    assert "dunning_cases" in text and "dunning_recovered_amount" not in text  # amounts need METRICS_AMOUNTS=1


# -- configuration -------------------------------------------------------------------------------

def test_development_secrets_are_refused_unless_bound_to_loopback(tmp_path):
    dev = {"STRIPE_WEBHOOK_SECRET": "whsec_local_development_secret", "ADMIN_TOKEN": "local-development-admin-token"}
    for host in ("127.0.0.1", "localhost", "::1"):
        assert load_settings(base_env(tmp_path, HOST=host, **dev)).admin_token == dev["ADMIN_TOKEN"]
    with pytest.raises(ConfigError, match="^STRIPE_WEBHOOK_SECRET is a development value"):
        load_settings(base_env(tmp_path, HOST="0.0.0.0", **dev))
    with pytest.raises(ConfigError, match="^ADMIN_TOKEN is a development value"):
        load_settings(base_env(tmp_path, HOST="0.0.0.0", ADMIN_TOKEN=dev["ADMIN_TOKEN"]))


@pytest.mark.parametrize("name", ["ADMIN_TOKEN", "STRIPE_WEBHOOK_SECRET", "PLATFORM_WEBHOOK_SECRET",
                                  "METRICS_TOKEN", "DASHBOARD_PASSWORD"])
def test_a_secret_shorter_than_24_characters_is_refused_naming_the_variable(tmp_path, name):
    extra = {"PLATFORM_WEBHOOK_URL": "https://platform.example/hooks"} if name == "PLATFORM_WEBHOOK_SECRET" else {}
    with pytest.raises(ConfigError) as info:
        load_settings(base_env(tmp_path, **{name: "short", **extra}))
    message = str(info.value)
    assert message.startswith(name) and "24" in message and "\n" not in message and "short" not in message


def test_a_mistyped_database_url_is_reported_without_its_password(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_settings(base_env(tmp_path, DATABASE_URL="postgrse://dunning:hunter2-secret@db.internal/dunning"))
    assert "hunter2-secret" not in str(info.value) and str(info.value).startswith("DATABASE_URL")


def test_readyz_says_which_dependency_is_down_but_not_why(make_runtime, capsys):
    from worker.infra.db import Database
    runtime = make_runtime()
    capsys.readouterr()
    runtime.db = Database("postgresql+psycopg://dunning_role:pw-secret-0123456789@127.0.0.1:1/none")
    resp = falcon.testing.TestClient(create_app(runtime)).simulate_get("/readyz")
    assert resp.status_code == 503
    assert resp.json["checks"]["database"] == "down"
    assert "127.0.0.1" not in resp.text and "dunning_role" not in resp.text and "port" not in resp.text
    assert "readyz.database_down" in capsys.readouterr().err


@pytest.mark.parametrize("address", ['"john doe"@example.com', "jos\u00e9@ex\u00e4mple.com", "a!b#c@example.com",
                                     "owner+tag@sub.example.co.uk", "x@[192.0.2.1]", "ada@xn--exmple-cua.com"])
def test_the_log_scrubber_masks_every_address_form(address):
    from worker.observe.logs import mask_email, scrub
    assert scrub(f"sent to {address} today") == "sent to [email] today"  # logs: not even the domain
    local, domain = address.rsplit("@", 1)
    assert mask_email(address) == f"{local[0]}***@{domain}"  # pages and CLI: enough to tell owners apart


# -- email links ----------------------------------------------------------------------------------

@pytest.mark.parametrize("url, kept", [
    ("https://invoice.stripe.com/i/acct_1/test_x", True),
    ("https://pay.stripe.com/invoice/acct_1/test_x/pdf", True),
    ("https://billing.example.com/account/billing?x=1", True),  # BILLING_PAGE_URL
    ("http://invoice.stripe.com/i/acct_1/test_x", False),
    ("https://invoice.stripe.com.evil.example/i/x", False),
    ("https://evil.example/invoice.stripe.com", False),
    ("https://user:pw@invoice.stripe.com/i/x", False),
    ("https://invoice.stripe.com:8443/i/x", False),
    ("https://billing.example.com/elsewhere", False),
    ("javascript:alert(1)", False),
])
def test_email_links_point_only_at_stripe_and_the_billing_page(tmp_path, url, kept):
    from worker.delivery.email_context import build_context
    settings = load_settings(base_env(tmp_path, BILLING_PAGE_URL="https://billing.example.com/account"))
    context = build_context(invoice={"id": "in_1", "hosted_invoice_url": url}, settings=settings)
    assert (context["hosted_invoice_url"] == url) is kept
    assert (context["action_url"] == url) is kept


def _makefile_defaults() -> dict[str, str]:
    from config.settings import PROJECT_ROOT
    found = {}
    for line in (PROJECT_ROOT / "Makefile").read_text().splitlines():
        if line.startswith("export ") and "?=" in line:
            name, value = line[len("export "):].split("?=", 1)
            found[name.strip()] = value.strip()
    return found


def test_make_run_defaults_start_on_loopback_and_are_refused_elsewhere(tmp_path):
    from config.settings import DEVELOPMENT_SECRETS, MIN_SECRET_LENGTH
    defaults = _makefile_defaults()
    dev = {k: defaults[k] for k in ("STRIPE_WEBHOOK_SECRET", "ADMIN_TOKEN")}
    assert defaults["HOST"] == "127.0.0.1"
    assert all(len(v) >= MIN_SECRET_LENGTH and v in DEVELOPMENT_SECRETS for v in dev.values())
    assert load_settings(base_env(tmp_path, HOST=defaults["HOST"], **dev)).admin_token == dev["ADMIN_TOKEN"]


@pytest.mark.parametrize("args, env, variable", [
    (["--host", "0.0.0.0"], {}, "STRIPE_WEBHOOK_SECRET"),
    ([], {"HOST": "0.0.0.0"}, "STRIPE_WEBHOOK_SECRET"),
    (["--host", "127.0.0.1"], {"ADMIN_TOKEN": "short"}, "ADMIN_TOKEN"),
])
def test_the_real_web_command_refuses_to_start_with_one_line(tmp_path, args, env, variable):
    import subprocess
    import sys
    from pathlib import Path
    defaults = _makefile_defaults()
    environ = {**base_env(tmp_path), "STRIPE_WEBHOOK_SECRET": defaults["STRIPE_WEBHOOK_SECRET"],
               "ADMIN_TOKEN": defaults["ADMIN_TOKEN"], "REDIS_URL": "redis://127.0.0.1:1/0", "PORT": "1",
               "PATH": str(Path(sys.executable).parent), **env}
    done = subprocess.run([str(Path(sys.executable).parent / "dunning"), "web", *args], env=environ,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"configuration error: {variable}"), done.stderr


# -- against the real web process (slow suite) ---------------------------------------------------

@pytest.fixture
def pg_service(tmp_path):
    from tests.support.processes import build_service
    svc = build_service(tmp_path, db="postgres", broker="redis")
    yield svc
    svc.close()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_hundred_stalled_connections_for_a_minute_starve_nothing(pg_service):
    """The acceptance run: 100 stalled connections held for 60 s (reopened as the server closes
    them) while 500 signed events arrive at 20/s and /healthz is polled; loopback only.

    p99 must be under 1 s. On a shared machine so loaded that the same 500 events miss that
    without any attack (the baseline, measured first), the bar is twice that baseline's p99:
    the attack must not be what makes the service slow.
    """
    from bench.frontdoor import post_events, stalled_scenario
    svc = pg_service
    web = svc.start_web(workers=2, threads=8, WEB_READ_TIMEOUT="10")
    baseline = post_events("127.0.0.1", svc.port, WEBHOOK_SECRET, 500, 20.0, "slowbase")
    result = stalled_scenario("127.0.0.1", svc.port, WEBHOOK_SECRET, stalled=100, hold_s=60.0, events=500,
                              rate=20.0, read_timeout=10.0, prefix="slowtest")
    events, health, stalled = result["events"], result["healthz"], result["stalled"]
    assert baseline["statuses"] == {"200": 500}, baseline
    assert events["statuses"] == {"200": 500}, result
    assert events["p99_ms"] < max(1000.0, 2 * baseline["p99_ms"]), (baseline, result)
    assert health["failures"] == 0 and health["polls"] >= 150, result
    assert stalled["late"] == 0 and stalled["closed_by_server"] >= 100, result
    assert stalled["max_close_s"] <= 15.0, result
    assert svc.scalar("SELECT COUNT(*) FROM events WHERE id LIKE 'evt_slowtest_%'") == 500
    assert web.alive() and "Traceback" not in web.log()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_over_real_http_a_chunked_event_is_stored_and_processed_and_2_mib_chunked_is_413(pg_service):
    import socket
    svc = pg_service
    web = svc.start_web(workers=1, threads=4)
    svc.start_worker(processes=1, threads=2)
    body = json.dumps(_event("evt_front_chunked_http")).encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in _signed(body.decode()).items())

    def chunked(payload: bytes, size: int = 300) -> bytes:
        parts = [f"{len(payload[i:i + size]):x}\r\n".encode() + payload[i:i + size] + b"\r\n"
                 for i in range(0, len(payload), size)]
        return b"".join(parts) + b"0\r\n\r\n"

    def send(raw: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", svc.port), timeout=30) as sock:
            try:
                sock.sendall(raw)
            except OSError:
                pass  # the server may answer 413 and close before the whole body is sent
            answer = b""
            while b"\r\n\r\n" not in answer:
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
            return answer

    answer = send(f"POST /webhooks/stripe HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n{head}\r\n".encode()
                  + chunked(body))
    assert answer.startswith(b"HTTP/1.1 200"), answer
    svc.wait_for(lambda: svc.scalar("SELECT status FROM events WHERE id = 'evt_front_chunked_http'") == "processed",
                 timeout=60)
    answer = send(b"POST /webhooks/stripe HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                  + chunked(b"x" * (2 * 1024 * 1024), 65536))
    assert answer.startswith(b"HTTP/1.1 413"), answer
    answer = send(b"POST /payment-links HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
                  + f"Authorization: Bearer {ADMIN_TOKEN}\r\n\r\n".encode() + chunked(b'{"invoice": "' + b"x" * 20_000 + b'"}'))
    assert answer.startswith(b"HTTP/1.1 413"), answer
    assert svc.scalar("SELECT COUNT(*) FROM events") == 1
    assert web.alive() and "Traceback" not in web.log()
