"""The queue dashboard at /dashboard, in a real browser, behind the admin credentials, on real Redis."""

from __future__ import annotations

import base64
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support.helpers import ADMIN_TOKEN
from tests.support.queues import dead_letter, take_one

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture
def redis_runtime(make_runtime, request):
    """Real Redis when it runs here, else the embedded server `make run` uses."""
    from tests.support.services import redis_reachable
    return make_runtime(broker="redis" if redis_reachable() else "embedded",
                        DASHBOARD_USER="ops", DASHBOARD_PASSWORD="dashboard-password-for-tests-42")


@pytest.fixture
def server(redis_runtime):
    """The web process's whole WSGI app (Falcon + mounted dashboard) on a real HTTP server."""
    from werkzeug.serving import make_server

    from worker.web.app import wsgi_app
    httpd = make_server("127.0.0.1", 0, wsgi_app(redis_runtime), threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    thread.join(5)


def get(url, authorization=None):
    req = urllib.request.Request(url, headers={"Authorization": authorization} if authorization else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


def basic(user, password):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def redis_counts(runtime, queue) -> tuple[int, int, int]:
    """Queued, delayed and dead-lettered messages of a queue, read from Redis itself."""
    client, ns = runtime.broker.client, runtime.settings.queue_namespace
    return (client.llen(f"{ns}:{queue}"), client.llen(f"{ns}:{queue}.DQ"), client.zcard(f"{ns}:{queue}.XQ"))


def test_dashboard_without_credentials_is_401_with_a_basic_challenge(server):
    for path in ("/dashboard", "/dashboard/", "/dashboard/queues/events"):
        status, headers, _ = get(server + path)
        assert status == 401
        assert headers["WWW-Authenticate"].startswith("Basic ")
    assert get(server + "/dashboard/", basic("ops", "wrong"))[0] == 401
    assert get(server + "/dashboard/", "Bearer not-the-token")[0] == 401


def test_dashboard_accepts_the_admin_token_and_the_configured_basic_credentials(server):
    assert get(server + "/dashboard/", f"Bearer {ADMIN_TOKEN}")[0] == 200
    assert get(server + "/dashboard/", basic("ops", "dashboard-password-for-tests-42"))[0] == 200
    assert get(server + "/dashboard/", basic("anyone", ADMIN_TOKEN))[0] == 200
    # The rest of the web process is not behind the dashboard's auth.
    assert get(server + "/healthz")[0] == 200


@pytest.mark.browser
def test_dashboard_in_a_browser_lists_queues_matching_redis_and_requeues_a_dead_letter(server, redis_runtime):
    if not CHROMIUM.exists():
        pytest.skip("Chromium is not installed at /usr/bin/chromium")
    from playwright.sync_api import sync_playwright
    runtime = redis_runtime
    actors = runtime.actors
    actors.process_event.send("evt_dashboard_1")
    actors.process_event.send("evt_dashboard_2")
    actors.send_email.send_with_options(args=("em_delayed",), delay=3_600_000)
    actors.send_email.send("em_dead")
    dead = dead_letter(runtime, "emails")
    queues = sorted(q for q in runtime.broker.queues if not q.endswith((".DQ", ".XQ")))
    assert {"events", "steps", "emails", "notices", "stripe"} <= set(queues)
    assert redis_counts(runtime, "emails") == (0, 1, 1)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(http_credentials={"username": "ops",
                                                         "password": "dashboard-password-for-tests-42"}).new_page()
            response = page.goto(server + "/dashboard/")
            assert response.status == 200
            shown = {}
            for row in page.locator("table").first.locator("tbody tr").all():
                cells = [c.inner_text().strip() for c in row.locator("td").all()]
                shown[cells[0]] = tuple(int(c) for c in cells[1:4])
            assert sorted(shown) == queues
            for queue in queues:
                assert shown[queue] == redis_counts(runtime, queue), queue
            # /metrics reports the same depths.
            from prometheus_client.parser import text_string_to_metric_families
            depth = {(s.labels["queue"], s.labels["kind"]): s.value for f in text_string_to_metric_families(
                get(server + "/metrics")[2]) for s in f.samples if s.name == "dunning_queue_messages"}
            for queue in queues:
                assert tuple(depth[(queue, k)] for k in ("ready", "delayed", "dead")) == redis_counts(runtime, queue)

            # Requeue the dead letter from the failed tab.
            page.click("text=emails")
            page.click("a[href='/dashboard/queues/emails/failed']")
            dead_row = page.locator("tbody tr", has_text="em_dead")
            assert dead_row.count() == 1
            dead_row.locator("form[action='/dashboard/requeue-message'] button").click()
            page.wait_for_load_state()
            assert redis_counts(runtime, "emails") == (1, 1, 0)
            page.goto(server + "/dashboard/")
            row = page.locator("tbody tr", has_text="emails").first
            assert [c.inner_text().strip() for c in row.locator("td").all()][1:4] == ["1", "1", "0"]

            # And a delayed message can be deleted.
            page.goto(server + "/dashboard/queues/emails/delayed")
            page.locator("tbody tr", has_text="em_delayed").locator(
                "form[action='/dashboard/delete-message'] button").click()
            page.wait_for_load_state()
            assert redis_counts(runtime, "emails") == (1, 0, 0)
        finally:
            browser.close()

    # The requeued message is the same message (same id and payload), ready for a worker.
    again = take_one(runtime, "emails")
    assert again.message_id == dead.message_id and tuple(again.args) == ("em_dead",)


def test_dashboard_and_console_link_to_each_other(server):
    status, _, page = get(server + "/dashboard/", f"Bearer {ADMIN_TOKEN}")
    assert status == 200 and '<a href="/console">Console</a>' in page
    status, _, page = get(server + "/console", f"Bearer {ADMIN_TOKEN}")
    assert status == 200 and '<a href="/dashboard/">Queues</a>' in page
