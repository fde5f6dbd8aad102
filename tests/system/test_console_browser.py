"""The console in headless Chromium: sign in, find an invoice, read its story, send a payment link.

The whole web process (worker.web.app.wsgi_app) on a real HTTP server, Stripe faked at its HTTP
boundary, the jobs run by a real Dramatiq worker on the stub broker, emails written to the
.eml outbox. Every page is checked at 375 and 1280 px for horizontal overflow.
"""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support.fake_stripe import API_KEY
from tests.support.dunning import DAY, T0, deliver, event, invoice
from tests.support.dunning import open_case
from tests.support.helpers import drain, rows

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
WIDTHS = (375, 1280)
USER, PASSWORD = "support", "console-password-0123456789"
OVERFLOW = "() => document.scrollingElement.scrollWidth - window.innerWidth"

pytestmark = pytest.mark.browser


@pytest.fixture
def console(make_runtime, fake_stripe):  # noqa: F811
    runtime = make_runtime(STRIPE_API_KEY=API_KEY, STRIPE_API_BASE=fake_stripe.base_url,
                           DASHBOARD_USER=USER, DASHBOARD_PASSWORD=PASSWORD)
    from werkzeug.serving import make_server

    from worker.web.app import wsgi_app
    httpd = make_server("127.0.0.1", 0, wsgi_app(runtime), threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield runtime, f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    thread.join(5)


def status_of(url: str, data: bytes | None = None, headers: dict | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers or {}), timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_sign_in_find_a_case_read_its_story_and_send_a_payment_link(console, fake_stripe):  # noqa: F811
    if not CHROMIUM.exists():
        pytest.skip("Chromium is not installed at /usr/bin/chromium")
    from playwright.sync_api import sync_playwright
    runtime, base = console
    open_case(runtime, fake_stripe, "in_browser42", amount=12000, email="owner@example.com")
    open_case(runtime, fake_stripe, "in_other77", customer="cus_other", amount=3000, email="other@example.com")
    drain(runtime)  # the step-0 emails go out
    # A second failed attempt a day later: events, transitions and emails interleave in time.
    deliver(runtime, event("invoice.payment_failed", invoice("in_browser42", customer="cus_owner",
                                                               subscription="sub_owner", amount=12000,
                                                               attempt_count=2), T0 + DAY))

    # Without credentials: 401 (the login page), for a page and for a form post.
    assert status_of(base + "/console/cases/in_browser42") == 401
    assert status_of(base + "/console/cases/in_browser42/payment-link", data=b"reason=x",
                     headers={"Content-Type": "application/x-www-form-urlencoded"}) in (401, 403)

    overflow: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            page = context.new_page()
            answer = page.goto(base + "/console")
            assert answer.status == 401 and page.locator("form[action='/console/login']").count() == 1
            page.fill("input[name=user]", USER)
            page.fill("input[name=password]", PASSWORD)
            page.click("form[action='/console/login'] button[type=submit]")
            page.wait_for_load_state()
            assert page.url == base + "/console" and page.locator("h1").inner_text() == "Recovery"
            assert page.locator("svg.chart").count() == 1

            # Find the invoice, open its case.
            page.fill("input[name=q]", "in_browser42")
            page.click("form.search button[type=submit]")
            page.wait_for_load_state()
            links = page.locator("table.cases tbody a")
            assert links.count() == 1 and links.first.inner_text() == "in_browser42"
            assert "owner@example.com" not in page.content() and "o***@example.com" in page.content()
            links.first.click()
            page.wait_for_load_state()
            assert page.url == base + "/console/cases/in_browser42"

            # Events, transitions and emails, in time order.
            timeline = page.locator("table.timeline tbody tr")
            kinds = [r.get_attribute("class") for r in timeline.all()]
            stamps = [r.locator("td").first.inner_text() for r in timeline.all()]
            assert {"k-event", "k-transition", "k-email"} <= set(kinds)
            assert stamps == sorted(stamps)
            assert page.locator("table.events tbody tr").count() == 2
            assert page.locator("article.email").count() == 1
            assert page.locator("article.email iframe[sandbox='']").count() == 1
            page.click("article.email summary")  # the rendered email, in its sandboxed frame
            preview = next(f for f in page.frames if f.url == "about:srcdoc")
            assert "$120.00" in preview.evaluate("() => document.body.innerText")

            # A form post without the CSRF token (same browser, same cookies): 403.
            forged = context.request.post(base + "/console/cases/in_browser42/payment-link",
                                          form={"reason": "no token"})
            assert forged.status == 403
            assert rows(runtime, "payment_links") == []

            # Send a payment link with a reason.
            page.fill("form[action$='/payment-link'] input[name=reason]", "owner cannot upload a card")
            page.click("form[action$='/payment-link'] button[type=submit]")
            page.wait_for_load_state()
            assert "Payment link requested" in page.locator(".flash.ok").inner_text()
            drain(runtime)  # the job: Stripe's invoice page prepared, the email written to the outbox
            (link,) = rows(runtime, "payment_links")
            assert link["status"] == "created" and link["requested_by"] == USER
            (email,) = rows(runtime, "emails", template="payment-link")
            assert email["status"] == "sent"
            assert (runtime.settings.email_outbox_dir / f"{email['id']}.eml").is_file()
            page.reload()
            requests = page.locator("table.links tbody tr")
            assert requests.count() == 1 and "owner cannot upload a card" in requests.first.inner_text()
            assert "created" in requests.first.inner_text()
            action = page.locator("table.actions tbody tr").first.inner_text()
            assert USER in action and "payment-link" in action and "owner cannot upload a card" in action
            assert page.locator("article.email").count() == 2
            assert "payment-link" in page.locator("article.email").nth(1).inner_text()

            # No horizontal overflow at phone and desktop widths.
            for width in WIDTHS:
                page.set_viewport_size({"width": width, "height": 900})
                for path in ("/console", "/console?window=90", "/console/cases", "/console/cases?q=in_browser42",
                             "/console/cases/in_browser42", "/console/login"):
                    page.goto(base + path)
                    page.locator("details").evaluate_all("els => els.forEach(d => d.open = true)")
                    extra = page.evaluate(OVERFLOW)
                    if extra > 0:
                        overflow.append(f"{path} @ {width}px: {extra} px too wide")
        finally:
            browser.close()
    assert not overflow, "\n".join(overflow)
