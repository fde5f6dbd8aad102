"""The support console at /console: credentials, CSRF, headers, search, list, one case, actions, recovery."""

from __future__ import annotations

import re
from datetime import timedelta
from urllib.parse import quote

import falcon.testing
import pytest
from sqlalchemy import update

from tests.support.fake_stripe import API_KEY
from tests.support.dunning import DAY, T0, deliver, failed, paid
from tests.support.dunning import open_case
from tests.support.helpers import ADMIN_TOKEN, drain, rows
from worker.pure.clock import utcnow

BEARER = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
HOSTILE = "<script>alert(1)</script>\"'\r\nX-Injected: yes"
CSRF_RE = re.compile(r'name="csrf" value="([0-9a-f]+)"')


def app(runtime) -> falcon.testing.TestClient:
    from worker.web.app import create_app
    return falcon.testing.TestClient(create_app(runtime))


class Browser:
    """A test client that keeps the console's cookies, as a browser does."""

    def __init__(self, runtime, headers=None):
        self.client, self.cookies, self.headers = app(runtime), {}, dict(headers or {})

    def _keep(self, result):
        for name, cookie in result.cookies.items():
            self.cookies[name] = cookie.value
        return result

    def get(self, path, **kw):
        return self._keep(self.client.simulate_get(path, headers=self.headers, cookies=self.cookies, **kw))

    def post(self, path, form: dict, *, csrf=True):
        page = self.get("/console")  # the recovery view (or the login page) has a form
        if csrf:
            form = {"csrf": CSRF_RE.search(page.text).group(1), **form}
        body = "&".join(f"{quote(k)}={quote(str(v))}" for k, v in form.items())
        return self._keep(self.client.simulate_post(
            path, body=body, cookies=self.cookies,
            headers={**self.headers, "Content-Type": "application/x-www-form-urlencoded"}))


def open_failed(runtime, invoice_id, *, customer="cus_owner", amount=12000, currency="usd", created=T0,
                email="owner@example.com"):
    assert deliver(runtime, failed(invoice_id, customer=customer, amount=amount, currency=currency,
                                   subscription=f"sub_{invoice_id[3:]}", email=email, created=created)) == "processed"


def set_case(runtime, invoice_id, **values):
    cases = runtime.db.table("cases")
    with runtime.db.transaction() as conn:
        conn.execute(update(cases).where(cases.c.invoice_id == invoice_id).values(**values))


# -- who may look, and what every answer carries ------------------------------------------------
def test_without_credentials_every_console_page_is_401_with_the_login_form(runtime):
    open_failed(runtime, "in_guarded")
    client = app(runtime)
    for path in ("/console", "/console/cases", "/console/cases?q=in_guarded", "/console/cases/in_guarded"):
        answer = client.simulate_get(path)
        assert answer.status_code == 401, path
        assert 'action="/console/login"' in answer.text
        assert "o***@example.com" not in answer.text and "failing" not in answer.text  # nothing of the case
    assert client.simulate_get("/console", headers={"Authorization": "Bearer not-the-admin-token-at-all"}
                               ).status_code == 401
    assert client.simulate_get("/console", headers=BEARER).status_code == 200
    # The rest of the web process is not behind the console.
    assert client.simulate_get("/healthz").status_code == 200


def test_http_basic_as_the_dashboard_accepts_it(make_runtime):
    import base64
    runtime = make_runtime(DASHBOARD_USER="ops", DASHBOARD_PASSWORD="dashboard-password-0123456789")
    client = app(runtime)

    def basic(user, password):
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    assert client.simulate_get("/console", headers=basic("ops", "dashboard-password-0123456789")).status_code == 200
    assert client.simulate_get("/console", headers=basic("anyone", ADMIN_TOKEN)).status_code == 200
    assert client.simulate_get("/console", headers=basic("ops", "wrong-password-0123456789")).status_code == 401


def test_login_form_sets_a_signed_session_cookie_and_refuses_a_wrong_password(make_runtime):
    runtime = make_runtime(DASHBOARD_USER="ops", DASHBOARD_PASSWORD="dashboard-password-0123456789")
    b = Browser(runtime)
    wrong = b.post("/console/login", {"user": "ops", "password": "not-it-0123456789abcdef"})
    assert wrong.status_code == 401 and "Wrong user or password" in wrong.text
    assert "console_session" not in b.cookies
    ok = b.post("/console/login", {"user": "ops", "password": "dashboard-password-0123456789",
                                   "next": "/console/cases"})
    assert ok.status_code == 303 and ok.headers["location"].endswith("/console/cases")
    session = ok.cookies["console_session"]
    assert session.http_only and session.same_site == "Strict" and session.path == "/console"
    assert b.get("/console/cases").status_code == 200
    assert ">ops<" in b.get("/console").text
    # A forged or altered cookie is nobody.
    user, expires, signature = b.cookies["console_session"].split(".")
    b.cookies["console_session"] = f"{user}.{int(expires) + 999}.{signature}"
    assert b.get("/console").status_code == 401


def test_login_never_redirects_off_the_console(make_runtime):
    runtime = make_runtime()
    b = Browser(runtime)
    for target in ("https://evil.example/", "//evil.example/console", "/console\r\nSet-Cookie: x=1", "/metrics"):
        answer = b.post("/console/login", {"user": "ops", "password": ADMIN_TOKEN, "next": target})
        assert answer.status_code == 303 and answer.headers["location"].endswith("/console"), target


def test_a_form_post_without_the_csrf_token_is_403_and_nothing_happens(runtime):
    open_failed(runtime, "in_csrf")
    b = Browser(runtime, BEARER)
    assert b.post("/console/cases/in_csrf/payment-link", {"reason": "owner asked"}, csrf=False).status_code == 403
    assert b.post("/console/cases/in_csrf/payment-link", {"reason": "owner asked", "csrf": "0" * 64},
                  csrf=False).status_code == 403
    # A token from another browser (another csrf cookie) does not fit this one.
    other = Browser(runtime, BEARER)
    token = CSRF_RE.search(other.get("/console").text).group(1)
    assert b.post("/console/cases/in_csrf/payment-link", {"reason": "owner asked", "csrf": token},
                  csrf=False).status_code == 403
    assert rows(runtime, "payment_links") == [] and rows(runtime, "console_actions") == []


def test_every_console_answer_forbids_framing_and_scripts(runtime):
    open_failed(runtime, "in_headers")
    b = Browser(runtime, BEARER)
    answers = [b.get("/console"), b.get("/console/cases"), b.get("/console/cases/in_headers"),
               b.get("/console/cases/in_nothing"), b.get("/console/static/console.css"),
               app(runtime).simulate_get("/console"),
               b.post("/console/cases/in_headers/payment-link", {"reason": "x"}, csrf=False),
               b.post("/console/recovery", {})]
    assert [a.status_code for a in answers] == [200, 200, 200, 404, 200, 401, 403, 303]
    for answer in answers:
        assert answer.headers["x-frame-options"] == "DENY"
        csp = answer.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp and "script-src" not in csp
    assert "<script" not in "".join(a.text for a in answers[:4])


# -- find, list, one case -----------------------------------------------------------------------
@pytest.fixture
def three_cases(any_runtime):
    runtime = any_runtime
    open_failed(runtime, "in_alpha01", customer="cus_alpha", amount=5000, created=T0, email="Ada.Owner@example.com")
    open_failed(runtime, "in_bravo02", customer="cus_bravo", amount=90000, created=T0 + 60, email="bob@example.com")
    open_failed(runtime, "in_charl03", customer="cus_charl", amount=20000, created=T0 + 120, email="cy@example.com")
    now = utcnow()
    set_case(runtime, "in_alpha01", opened_at=now - timedelta(hours=3), disrupt_at=now + timedelta(days=2),
             state="disruption_scheduled")
    set_case(runtime, "in_bravo02", opened_at=now - timedelta(hours=2), disrupt_at=now + timedelta(days=9),
             state="disruption_scheduled", owner_unreachable=1)
    set_case(runtime, "in_charl03", opened_at=now - timedelta(hours=1))
    return runtime


def listed(answer) -> list[str]:
    return re.findall(r'href="/console/cases/(in_[A-Za-z0-9_]+)"', answer.text)


def test_search_finds_by_invoice_id_number_customer_subscription_and_full_email_only(three_cases):
    b = Browser(three_cases, BEARER)
    for q in ("in_bravo02", "NUM-ravo02", "cus_bravo", "sub_bravo02", "bob@example.com", "BOB@example.com"):
        assert listed(b.get("/console/cases", params={"q": q})) == ["in_bravo02"], q
    assert listed(b.get("/console/cases", params={"q": "Ada.Owner@example.com"})) == ["in_alpha01"]
    for q in ("bob", "example.com", "@example.com", "in_bravo", "nothing"):
        assert listed(b.get("/console/cases", params={"q": q})) == [], q
    page = b.get("/console/cases").text
    assert "bob@example.com" not in page and "b***@example.com" in page  # lists mask addresses


def test_list_filters_by_state_disruption_window_and_unreachable_and_sorts(three_cases):
    b = Browser(three_cases, BEARER)
    assert listed(b.get("/console/cases")) == ["in_charl03", "in_bravo02", "in_alpha01"]
    assert listed(b.get("/console/cases", params={"sort": "amount"})) == ["in_bravo02", "in_charl03", "in_alpha01"]
    assert listed(b.get("/console/cases", params={"sort": "disrupt"})) == ["in_alpha01", "in_bravo02"]
    assert listed(b.get("/console/cases", params={"state": "failing"})) == ["in_charl03"]
    assert listed(b.get("/console/cases", params={"within": "3"})) == ["in_alpha01"]
    assert listed(b.get("/console/cases", params={"within": "10"})) == ["in_bravo02", "in_alpha01"]
    assert listed(b.get("/console/cases", params={"unreachable": "1"})) == ["in_bravo02"]
    assert "owner unreachable" in b.get("/console/cases", params={"unreachable": "1"}).text


@pytest.mark.parametrize("sort", ["opened", "amount", "disrupt"])
def test_keyset_pages_cover_every_case_once_in_order(any_runtime, sort):
    from worker.console.cases import CaseFilter, list_cases
    runtime = any_runtime
    now = utcnow()
    for i in range(7):
        open_failed(runtime, f"in_page{i}", customer=f"cus_page{i}", created=T0 + i)
        # Equal sort keys in pairs: the id breaks ties, so no row is lost or repeated between pages.
        set_case(runtime, f"in_page{i}", amount_due=1000 * (i // 2), opened_at=now - timedelta(minutes=i // 2),
                 disrupt_at=now + timedelta(hours=i // 2))
    seen, after = [], ""
    for _ in range(10):
        page = list_cases(runtime, CaseFilter(sort=sort, after=after), page_size=2)
        seen += [r["invoice_id"] for r in page["rows"]]
        if not page["next"]:
            break
        after = page["next"]
    everything = list_cases(runtime, CaseFilter(sort=sort), page_size=100)["rows"]
    assert seen == [r["invoice_id"] for r in everything] and len(set(seen)) == 7


def test_a_case_page_tells_the_whole_story_in_time_order(runtime):
    open_failed(runtime, "in_story", created=T0)
    deliver(runtime, paid("in_story", created=T0 + DAY))
    b = Browser(runtime, BEARER)
    page = b.get("/console/cases/in_story").text
    timeline = page.split('<table class="timeline">')[1].split("</table>")[0]
    kinds = re.findall(r'<tr class="k-([a-z-]+)"><td>([0-9: -]+)</td>', timeline)
    stamps = [stamp for _, stamp in kinds]
    assert stamps == sorted(stamps)
    assert {"event", "transition", "email"} <= {k for k, _ in kinds}
    assert "invoice.payment_failed" in timeline and "invoice.paid" in timeline
    assert "failing → recovered" in timeline
    assert 'srcdoc="' in page and 'sandbox=""' in page  # a rendered preview, sandboxed
    assert "owner@example.com" not in page and "o***@example.com" in page


# -- actions ---------------------------------------------------------------------------------
@pytest.fixture
def linked_runtime(make_runtime, fake_stripe, request):  # noqa: F811
    return make_runtime(STRIPE_API_KEY=API_KEY, STRIPE_API_BASE=fake_stripe.base_url)


def test_a_payment_link_from_the_case_page_follows_the_api_rules_and_is_recorded(linked_runtime, fake_stripe):  # noqa: F811
    runtime = linked_runtime
    open_case(runtime, fake_stripe, "in_link", amount=500000)
    b = Browser(runtime, BEARER)
    assert b.post("/console/cases/in_link/payment-link", {"reason": "  "}).status_code == 400
    assert rows(runtime, "payment_links") == []
    answer = b.post("/console/cases/in_link/payment-link", {"reason": "owner cannot upload a card"})
    assert answer.status_code == 303 and answer.headers["location"] == "/console/cases/in_link?done=payment-link"
    drain(runtime)
    (link,) = rows(runtime, "payment_links")
    assert (link["status"], link["requested_by"], link["note"]) == ("created", "admin-token",
                                                                    "owner cannot upload a card")
    (email,) = rows(runtime, "emails", template="payment-link")
    assert email["recipient"] == "owner@example.com"
    assert "ACH Direct Debit" in email["body_text"]  # bank methods from the policy's minimum
    (action,) = rows(runtime, "console_actions")
    assert (action["actor"], action["action"], action["invoice_id"], action["target"], action["reason"]) == (
        "admin-token", "payment-link", "in_link", link["id"], "owner cannot upload a card")
    page = b.get("/console/cases/in_link?done=payment-link").text
    assert "Payment link requested" in page and "owner cannot upload a card" in page and link["id"] in page
    # A reason naming an address is refused like the API refuses it: owner of record only.
    refused = b.post("/console/cases/in_link/payment-link", {"reason": "send it to someone@else.example"})
    assert refused.status_code == 400 and "owner of record only" in refused.text
    # The daily limit holds here too.
    for _ in range(4):
        assert b.post("/console/cases/in_link/payment-link", {"reason": "again"}).status_code == 303
    over = b.post("/console/cases/in_link/payment-link", {"reason": "again"})
    assert over.status_code == 429 and "limit" in over.text
    assert len(rows(runtime, "console_actions")) == 5


def test_an_agent_signed_in_with_an_email_address_can_still_send_a_payment_link(linked_runtime, fake_stripe):  # noqa: F811
    import base64
    runtime = linked_runtime
    open_case(runtime, fake_stripe, "in_agent", amount=12000)
    agent = {"Authorization": "Basic " + base64.b64encode(f"ann@support.example:{ADMIN_TOKEN}".encode()).decode()}
    b = Browser(runtime, agent)
    assert b.post("/console/cases/in_agent/payment-link", {"reason": "asked on the phone"}).status_code == 303
    (link,) = rows(runtime, "payment_links")
    assert link["requested_by"] == "ann at support.example"
    assert rows(runtime, "console_actions")[0]["actor"] == "ann@support.example"
    many = "&".join(f"f{i}=x" for i in range(50))
    assert b.client.simulate_post("/console/cases/in_agent/payment-link", body=many, cookies=b.cookies, headers={
        **agent, "Content-Type": "application/x-www-form-urlencoded"}).status_code == 403


def test_replaying_a_failed_event_of_the_case(runtime):
    open_failed(runtime, "in_replay")
    # deliver() seeds the owner of record first (a customer.created event, issue 12): take the invoice's event.
    (event,) = rows(runtime, "events", object_id="in_replay")
    b = Browser(runtime, BEARER)
    assert b.post(f"/console/cases/in_replay/events/{event['id']}/replay", {"reason": "r"}).status_code == 409
    events = runtime.db.table("events")
    with runtime.db.transaction() as conn:
        conn.execute(update(events).where(events.c.id == event["id"]).values(status="failed", last_error="boom"))
    assert "Replay" in b.get("/console/cases/in_replay").text
    assert b.post("/console/cases/in_replay/events/evt_other/replay", {"reason": "r"}).status_code == 404
    answer = b.post(f"/console/cases/in_replay/events/{event['id']}/replay", {"reason": "handler bug fixed"})
    assert answer.status_code == 303
    assert rows(runtime, "events", id=event["id"])[0]["status"] == "received"
    drain(runtime)
    assert rows(runtime, "events", id=event["id"])[0]["status"] == "processed"
    (action,) = rows(runtime, "console_actions")
    assert (action["action"], action["target"], action["reason"]) == ("replay-event", event["id"], "handler bug fixed")


def test_retrying_an_undelivered_email_of_the_case(runtime):
    open_failed(runtime, "in_retry")
    open_failed(runtime, "in_notmine", customer="cus_other")
    (email,) = rows(runtime, "emails", invoice_id="in_retry")
    (other,) = rows(runtime, "emails", invoice_id="in_notmine")
    emails = runtime.db.table("emails")
    with runtime.db.transaction() as conn:
        conn.execute(update(emails).values(status="failed", attempts=9, last_error="bounced"))
    b = Browser(runtime, BEARER)
    assert b.post(f"/console/cases/in_retry/outbox/{other['id']}/retry", {"reason": "r"}).status_code == 404
    answer = b.post(f"/console/cases/in_retry/outbox/{email['id']}/retry", {"reason": "mailbox fixed"})
    assert answer.status_code == 303 and answer.headers["location"].endswith("done=retry-email")
    row = rows(runtime, "emails", id=email["id"])[0]
    assert (row["status"], row["attempts"]) == ("pending", 0)
    drain(runtime)
    assert rows(runtime, "emails", id=email["id"])[0]["status"] == "sent"
    assert b.post(f"/console/cases/in_retry/outbox/{email['id']}/retry", {"reason": "r"}).status_code == 409
    (action,) = rows(runtime, "console_actions")
    assert (action["action"], action["reason"], action["outcome"]) == ("retry-email", "mailbox fixed",
                                                                       "was failed; due now")
    assert "mailbox fixed" in b.get("/console/cases/in_retry").text


# -- hostile values ------------------------------------------------------------------------------
def test_hostile_names_numbers_and_queries_are_escaped_on_every_page(runtime):
    open_failed(runtime, "in_hostile")
    customers, invoices = runtime.db.table("customers"), runtime.db.table("invoices")
    with runtime.db.transaction() as conn:
        conn.execute(update(customers).values(name=HOSTILE))
        conn.execute(update(invoices).values(number=HOSTILE))
    b = Browser(runtime, BEARER)
    assert b.post("/console/cases/in_hostile/payment-link", {"reason": HOSTILE}).status_code in (303, 400)
    pages = [b.get("/console/cases"), b.get("/console/cases", params={"q": HOSTILE}),
             b.get("/console/cases/in_hostile"), b.get("/console/cases/" + quote("in_<img src=x onerror=alert(1)>\"'\r\n", safe="")),
             b.get("/console", params={"window": HOSTILE})]
    for answer in pages:
        assert "<script>alert" not in answer.text and "<img src=x" not in answer.text
        assert "X-Injected" not in answer.headers
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&#34;&#39;" in pages[2].text  # the number and the name
    assert "&lt;script&gt;" in pages[0].text and "&lt;script&gt;" in pages[1].text 
    assert pages[3].status_code == 404 and "in_&lt;img src=x onerror=alert(1)&gt;&#34;&#39;" in pages[3].text


# -- the recovery view ---------------------------------------------------------------------------
def test_recovery_view_counts_rates_steps_medians_and_what_followed_emails(any_runtime):
    from worker.console.recovery import compute
    runtime = any_runtime
    now = utcnow().replace(microsecond=0)
    specs = [  # invoice, currency, state, opened days ago, days to recover
        ("in_r1", "usd", "recovered", 2, 1), ("in_r2", "usd", "recovered", 20, 4.02), ("in_r3", "usd", "uncollectible", 3, None),
        ("in_r4", "usd", "failing", 6.6, None), ("in_r5", "eur", "recovered", 60, 8), ("in_r6", "eur", "voided", 50, None),
        ("in_r7", "usd", "recovered", 200, 1),  # outside every window
    ]
    for i, (inv, currency, state, ago, days) in enumerate(specs):
        open_failed(runtime, inv, customer=f"cus_r{i}", currency=currency, amount=1000 * (i + 1), created=T0 + i)
        opened = now - timedelta(days=ago)
        set_case(runtime, inv, state=state, opened_at=opened, first_failed_at=opened,
                 closed_at=opened + timedelta(days=days) if days is not None else
                 (opened if state in ("uncollectible", "voided") else None),
                 recovered_amount=1000 * (i + 1) if state == "recovered" else None)
    emails = runtime.db.table("emails")
    with runtime.db.transaction() as conn:  # the step-0 email of in_r1 was sent when its case opened
        conn.execute(update(emails).where(emails.c.invoice_id == "in_r1").values(
            status="sent", sent_at=now - timedelta(days=2)))
        conn.execute(update(emails).where(emails.c.invoice_id == "in_r2").values(
            status="sent", sent_at=now - timedelta(days=20)))
    view = compute(runtime, now)
    week = view["windows"]["7"]["currencies"]
    assert week == {"usd": {"opened": 3, "recovered": 1, "uncollectible": 1, "voided": 0, "open": 1,
                            "recovered_amount": 1000, "by_step": {"payment-failed": 1}, "rate": 1 / 3,
                            "median_days": 1.0}}
    month = view["windows"]["30"]["currencies"]["usd"]
    assert (month["opened"], month["recovered"], month["by_step"]) == (4, 2, {"payment-failed": 1, "reminder": 1})
    assert month["median_days"] == 2.5 and month["recovered_amount"] == 3000  # (1 + 4) / 2
    quarter = view["windows"]["90"]["currencies"]
    assert quarter["eur"]["recovered"] == 1 and quarter["eur"]["voided"] == 1
    assert quarter["eur"]["by_step"] == {"disruption-warning": 1} and quarter["eur"]["median_days"] == 8.0
    assert view["windows"]["30"]["templates"] == {"payment-failed": {"sent": 2, "paid_3d": 1}}
    assert sum(w["failed"] for w in view["weeks"]) == 6 and sum(w["recovered"] for w in view["weeks"]) == 3
    page = Browser(runtime, BEARER).get("/console", params={"window": "7"}).text
    assert "<svg" in page and "33.3%" in page and "$10.00" in page


def test_the_recovery_snapshot_is_reused_until_stale(runtime):
    from worker.console.recovery import SNAPSHOT_TTL, snapshot
    now = utcnow()
    first = snapshot(runtime, now=now)
    open_failed(runtime, "in_after")
    assert snapshot(runtime, now=now + timedelta(seconds=5)) == first
    fresh = snapshot(runtime, now=now + SNAPSHOT_TTL + timedelta(seconds=1))
    assert fresh != first and fresh["windows"]["7"]["currencies"]["usd"]["opened"] == 1
    # The page shows a stale snapshot at once and recomputes it in the background.
    from worker.console import recovery as console_recovery
    later = now + SNAPSHOT_TTL * 3
    assert snapshot(runtime, now=later, background=True) == fresh
    with console_recovery._refreshing:  # the background refresh has finished
        pass
    (stored,) = rows(runtime, "console_snapshots")
    assert stored["computed_at"] < now + SNAPSHOT_TTL  # rewritten by the background refresh, as of real time
    assert '"opened":1' in stored["body"]
    asked = now + timedelta(seconds=10)  # a refresh on request recomputes however fresh the snapshot is
    assert snapshot(runtime, refresh=True, now=asked)["computed_at"] == asked.replace(microsecond=0).isoformat() + "Z"


def test_the_weekly_chart_is_drawn_from_numbers_only():
    from worker.console.web import weekly_chart
    svg = str(weekly_chart([{"starts": "2026-11-01T00:00:00Z", "failed": 10, "recovered": 4},
                            {"starts": "2026-11-08T00:00:00Z", "failed": 0, "recovered": 0}]))
    assert svg.startswith("<svg") and svg.count("<rect") == 4 and "failed: 10" in svg and "recovered: 4" in svg


def test_events_are_stored_with_their_object_id(runtime):
    open_failed(runtime, "in_objid")
    # deliver() seeds the owner of record first (a customer.created event, issue 12): both carry their object's id.
    assert sorted((e["type"], e["object_id"]) for e in rows(runtime, "events")) == [
        ("customer.created", "cus_owner"), ("invoice.payment_failed", "in_objid")]


def test_releasing_the_hold_of_an_unreachable_owners_case_is_recorded_and_refused_when_not_held(runtime):
    open_failed(runtime, "in_held")
    open_failed(runtime, "in_reachable", customer="cus_reachable")
    cases = runtime.db.table("cases")
    with runtime.db.transaction() as conn:
        conn.execute(update(cases).where(cases.c.invoice_id == "in_held").values(owner_unreachable=1))
    b = Browser(runtime, BEARER)
    assert "Release the hold" in b.get("/console/cases/in_held").text
    assert "Release the hold" not in b.get("/console/cases/in_reachable").text
    assert b.post("/console/cases/in_held/release", {"reason": ""}).status_code == 400
    answer = b.post("/console/cases/in_held/release", {"reason": "owner confirmed by phone"})
    assert answer.status_code == 303 and answer.headers["location"].endswith("done=release-hold")
    (case,) = rows(runtime, "cases", invoice_id="in_held")
    assert case["hold_released"] == 1 and case["owner_unreachable"] == 1
    (release,) = rows(runtime, "case_releases")
    assert release["case_id"] == case["id"] and release["reason"] == "owner confirmed by phone"
    (action,) = rows(runtime, "console_actions")
    assert (action["action"], action["case_id"]) == ("release-hold", case["id"])
    page = b.get("/console/cases/in_held").text
    assert "owner confirmed by phone" in page and "Release the hold" not in page
    refused = b.post("/console/cases/in_reachable/release", {"reason": "no hold here"})
    assert refused.status_code == 409 and "not held" in refused.text
    assert len(rows(runtime, "console_actions")) == 1
