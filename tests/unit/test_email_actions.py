"""Issue 14: one button for the main action, advice by decline reason, branding and replies."""

from __future__ import annotations

import re
from datetime import datetime

import pytest

from config.settings import ConfigError, load_settings
from worker.delivery.decline_reasons import (ADVICE, AUTHENTICATION_REQUIRED, DECLINE_GROUPS, DO_NOT_HONOR,
                                    EXPIRED_CARD, GROUPS, INSUFFICIENT_FUNDS, LOST_OR_STOLEN,
                                    PROCESSING_ERROR, group_of)
from worker.delivery.email_context import CARD_UPDATE_PATH, build_context
from worker.delivery.emails import render

PORTAL = "https://app.example.com/plans/{customer}/billing?sub={subscription}"

# Stripe's documented decline codes (https://docs.stripe.com/declines/codes) and the card error
# codes that arrive in `code` instead (https://docs.stripe.com/error-codes).
STRIPE_DECLINE_CODES = """
authentication_required approve_with_id call_issuer card_not_supported card_velocity_exceeded
currency_not_supported do_not_honor do_not_try_again duplicate_transaction expired_card fraudulent
generic_decline incorrect_number incorrect_cvc incorrect_pin incorrect_zip insufficient_funds
invalid_account invalid_amount invalid_cvc invalid_expiry_month invalid_expiry_year invalid_number
invalid_pin issuer_not_available lost_card merchant_blacklist new_account_information_available
no_action_taken not_permitted offline_pin_required online_or_offline_pin_required pickup_card
pin_try_exceeded processing_error reenter_transaction restricted_card revocation_of_all_authorizations
revocation_of_authorization security_violation service_not_allowed stolen_card stop_payment_order
testmode_decline transaction_not_allowed try_again_later withdrawal_count_limit_exceeded
card_declined card_decline_rate_limit_exceeded
""".split()


def _settings(tmp_path, **env):
    base = {"STRIPE_WEBHOOK_SECRET": "whsec_" + "s" * 30, "ADMIN_TOKEN": "a" * 32,
            "DUNNING_VAR_DIR": str(tmp_path), "BILLING_PORTAL_URL": PORTAL}
    base.update(env)
    return load_settings({k: v for k, v in base.items() if v is not None})


def _case(code="card_declined", **over):
    case = {"id": "dc_1", "invoice_id": "in_1", "customer_id": "cus_1", "subscription_id": "sub_1",
            "state": "failing", "currency": "usd", "amount_due": 4900, "attempt_count": 1,
            "last_failure_code": code, "last_failure_message": "Your card has expired.",
            "next_payment_attempt": datetime(2026, 12, 5, 9, 0), "disrupt_at": datetime(2026, 12, 16, 9, 0),
            "card_brand": "visa", "card_last4": "4242", "recovered_amount": None}
    case.update(over)
    return case


def _invoice(**over):
    invoice = {"id": "in_1", "number": "ABC-0001", "status": "open", "currency": "usd", "amount_due": 4900,
               "amount_remaining": 4900, "customer_id": "cus_1", "subscription_id": "sub_1",
               "hosted_invoice_url": "https://invoice.stripe.com/i/acct_1/test_x",
               "invoice_pdf": "https://pay.stripe.com/invoice/acct_1/test_x/pdf"}
    invoice.update(over)
    return invoice


def _render(template, settings, case=None, invoice=None, card=None, extra=None):
    context = build_context(case=case or _case(), invoice=invoice or _invoice(),
                            customer={"id": "cus_1", "name": "Ada", "email": "ada@example.com"},
                            card=card, extra=extra, settings=settings)
    return render(template, context, getattr(settings, "email_templates_dir", None))


# -- the decline table --------------------------------------------------------------------
@pytest.mark.parametrize("code", STRIPE_DECLINE_CODES)
def test_every_documented_stripe_decline_code_has_a_group_with_advice(code):
    assert DECLINE_GROUPS[code] in GROUPS
    reason, advice = ADVICE[DECLINE_GROUPS[code]]
    assert reason and advice


@pytest.mark.parametrize("codes, group", [
    (("expired_card",), EXPIRED_CARD),
    (("insufficient_funds", "card_declined"), INSUFFICIENT_FUNDS),  # decline_code before code
    (("do_not_honor",), DO_NOT_HONOR),
    (("generic_decline",), DO_NOT_HONOR),
    (("stolen_card",), LOST_OR_STOLEN),
    (("lost_card",), LOST_OR_STOLEN),
    (("authentication_required",), AUTHENTICATION_REQUIRED),
    (("processing_error",), PROCESSING_ERROR),
    (("something_new_from_stripe",), DO_NOT_HONOR),  # unknown: treated as a generic decline
    ((None, ""), None),
])
def test_codes_fall_into_the_groups_the_owner_acts_on(codes, group):
    assert group_of(*codes) == group


def test_lost_or_stolen_advice_never_tells_the_owner_the_card_was_reported():
    reason, advice = ADVICE[LOST_OR_STOLEN]
    assert "stolen" not in (reason + advice).lower() and "lost" not in (reason + advice).lower()


# -- the button ---------------------------------------------------------------------------
def test_day0_expired_visa_names_the_card_says_it_expired_and_buttons_to_the_portal(tmp_path):
    settings = _settings(tmp_path)
    email = _render("payment-failed", settings, case=_case("expired_card"),
                    card={"brand": "visa", "last4": "4242", "exp_month": 11, "exp_year": 2026})
    assert email.subject.startswith("Your Visa ending in 4242 has expired")
    portal = "https://app.example.com/plans/cus_1/billing?sub=sub_1"
    first_lines = email.text.split("WHAT HAPPENS NEXT")[0]
    assert "Visa ending in 4242 (expires 11/2026)" in first_lines and "The card has expired." in first_lines
    assert portal in email.text  # the text part carries the same link
    html_portal = portal.replace("&", "&amp;")
    assert re.search(r'<a class="button"[^>]*href="' + re.escape(html_portal) + '"', email.html)
    assert re.search(r'<v:roundrect[^>]*href="' + re.escape(html_portal) + '"', email.html)  # Outlook (VML)
    assert "<!--[if mso]>" in email.html and "bgcolor=" in email.html
    assert CARD_UPDATE_PATH not in email.text  # the button replaces the path text
    # the other action (pay the invoice) stays as a secondary link
    assert 'href="https://invoice.stripe.com/i/acct_1/test_x"' in email.html


def test_placeholders_are_url_quoted_and_an_unknown_subscription_falls_back_to_the_path(tmp_path):
    settings = _settings(tmp_path)
    email = _render("reminder", settings, case=_case(customer_id="cus_a/b?c", subscription_id=None),
                    invoice=_invoice(customer_id="cus_a/b?c", subscription_id=None))
    assert "app.example.com" not in email.text and CARD_UPDATE_PATH in email.text
    settings = _settings(tmp_path, BILLING_PORTAL_URL="https://app.example.com/billing/{customer}")
    context = build_context(case=_case(customer_id="cus_a/b?c"), customer={"id": "cus_a/b?c"}, settings=settings)
    assert context["portal_url"] == "https://app.example.com/billing/cus_a%2Fb%3Fc"


def test_without_a_portal_the_dashboard_path_stays(tmp_path):
    email = _render("reminder", _settings(tmp_path, BILLING_PORTAL_URL=None))
    assert CARD_UPDATE_PATH in email.text and "v:roundrect" not in email.html


def test_authentication_required_makes_confirming_on_the_invoice_page_the_button(tmp_path):
    email = _render("payment-failed", _settings(tmp_path), case=_case("authentication_required"))
    assert re.search(r'<a class="button"[^>]*href="https://invoice.stripe.com/i/acct_1/test_x"[^>]*>Confirm the payment',
                     email.html)
    assert "Confirm the payment:\n  https://invoice.stripe.com/i/acct_1/test_x" in email.text
    assert "saving the same card again does not help" in email.text


@pytest.mark.parametrize("code, says, never", [
    ("insufficient_funds", "Make sure the amount is available", "cannot succeed with the same card"),
    ("expired_card", "cannot succeed with the same card", "Make sure the amount"),
    ("processing_error", "No change is needed", "cannot succeed with the same card"),
    ("do_not_honor", "Call the number on the back of your card", "cannot succeed"),
])
def test_reminder_advice_follows_the_decline_reason(tmp_path, code, says, never):
    email = _render("reminder", _settings(tmp_path), case=_case(code))
    assert says in email.text and never not in email.text
    assert "likely fail again" not in email.text


def test_paid_invoices_say_view_receipt_and_never_pay(tmp_path):
    for template in ("payment-received", "service-restored"):
        email = _render(template, _settings(tmp_path), case=_case(state="recovered", recovered_amount=4900),
                        invoice=_invoice(status="paid"))
        assert "View receipt" in email.text and "View receipt" in email.html
        assert " pay " not in email.text.lower() and "and pay" not in email.html


# -- branding and replies -----------------------------------------------------------------
def test_branding_reaches_the_email_and_no_internal_id_is_in_the_footer(tmp_path):
    settings = _settings(tmp_path, BRAND_NAME="Acme Cloud", BRAND_COLOR="#AA3300",
                         BRAND_LOGO_URL="https://cdn.acme.example/logo.png",
                         SUPPORT_URL="https://help.acme.example/billing")
    email = _render("payment-failed", settings)
    assert '<img src="https://cdn.acme.example/logo.png" alt="Acme Cloud"' in email.html
    assert 'bgcolor="#aa3300"' in email.html
    assert 'href="https://help.acme.example/billing"' in email.html and "https://help.acme.example/billing" in email.text
    assert email.text.rstrip().endswith("Acme Cloud")
    footer_text = email.text.rsplit("\n--\n", 1)[1]
    footer_html = email.html.split('class="footer"', 1)[1]
    for footer in (footer_text, footer_html):
        assert "cus_1" not in footer and "Invoice ABC-0001" in footer


def test_settings_refuse_a_bad_colour_a_missing_template_folder_and_an_http_portal(tmp_path):
    with pytest.raises(ConfigError, match="BRAND_COLOR"):
        _settings(tmp_path, BRAND_COLOR="red")
    with pytest.raises(ConfigError, match="EMAIL_TEMPLATES_DIR"):
        _settings(tmp_path, EMAIL_TEMPLATES_DIR=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="BILLING_PORTAL_URL"):
        _settings(tmp_path, BILLING_PORTAL_URL="http://app.example.com/billing")


def test_a_file_in_email_templates_dir_replaces_the_builtin_reminder_subject_only(tmp_path):
    override = tmp_path / "mytemplates"
    (override / "reminder").mkdir(parents=True)
    (override / "reminder" / "subject.txt").write_text("Acme: {{ amount }} is still open\n")
    settings = _settings(tmp_path, EMAIL_TEMPLATES_DIR=str(override))
    email = _render("reminder", settings)
    assert email.subject == "Acme: $49.00 USD is still open"
    assert "A friendly reminder" in email.text  # the built-in body is still used
    assert _render("payment-failed", settings).subject.startswith("Payment failed")


def test_reply_to_is_set_from_email_reply_to(tmp_path):
    from worker.delivery.email_delivery import OutgoingEmail, build_mime
    email = OutgoingEmail(id="em_1", template="reminder", recipient="ada@example.com", subject="s", text="t",
                          html="<p>h</p>", invoice_id="in_1", customer_id="cus_1", case_id="dc_1",
                          created_at=datetime(2026, 12, 1))
    msg = build_mime(email, "Acme Billing <billing@acme.example>", "Acme Support <support@acme.example>")
    assert msg["Reply-To"] == "Acme Support <support@acme.example>"
    assert build_mime(email, "billing@acme.example")["Reply-To"] is None


# -- the day-0 email reads the failed PaymentIntent (STRIPE_API_KEY set; the strict local fake) ---
from tests.support.fake_stripe import FakeStripe, FakeStripeServer  # noqa: E402
from tests.support.dunning import emails as email_rows, failed  # noqa: E402
from tests.support.dunning import _store_and_process as deliver  # noqa: E402
from tests.support.helpers import rows  # noqa: E402

API_KEY = "sk_test_" + "k" * 24


@pytest.fixture
def stripe_fake():
    with FakeStripeServer(FakeStripe(api_key=API_KEY)) as served:
        yield served


@pytest.fixture(params=["sqlite", "postgres"])
def keyed(make_runtime, stripe_fake, request):
    return make_runtime(db=request.param, STRIPE_API_KEY=API_KEY, STRIPE_API_BASE=stripe_fake.base_url,
                        BILLING_PORTAL_URL="https://app.example.com/billing/{customer}")


def _failure_naming(intent_id):
    event = failed()
    event["data"]["object"]["payments"] = {"object": "list", "data": [
        {"object": "invoice_payment", "payment": {"type": "payment_intent", "payment_intent": intent_id}}]}
    return event


def test_day0_email_names_the_card_and_the_expiry_decline_read_from_the_payment_intent(keyed, stripe_fake):
    stripe_fake.add_customer("cus_test_1", email="owner@example.com")
    stripe_fake.payment_intents["pi_day0"] = {
        "id": "pi_day0", "object": "payment_intent", "status": "requires_payment_method",
        "last_payment_error": {"type": "card_error", "code": "expired_card", "message": "Your card has expired.",
                               "payment_method": {"id": "pm_1", "object": "payment_method", "type": "card",
                                                  "card": {"brand": "visa", "last4": "4242", "exp_month": 11,
                                                           "exp_year": 2026, "fingerprint": "fp_secret",
                                                           "country": "US"}}}}
    assert deliver(keyed, _failure_naming("pi_day0")) == "processed"
    (email,) = email_rows(keyed)
    assert email["subject"].startswith("Your Visa ending in 4242 has expired")
    assert "https://app.example.com/billing/cus_test_1" in email["body_text"]
    assert "Add a card with current details" in email["body_text"]
    (case,) = rows(keyed, "cases")
    assert (case["card_brand"], case["card_last4"], case["last_failure_code"]) == ("visa", "4242", "expired_card")
    # the expiry of the card that failed, kept on the case (no card event recorded it): end to end
    assert (case["card_exp_month"], case["card_exp_year"]) == (11, 2026) and not rows(keyed, "cards")
    assert "Visa ending in 4242 (expires 11/2026)" in email["body_text"].split("WHAT HAPPENS NEXT")[0]
    assert not any("fp_secret" in str(v) for row in rows(keyed, "cases") + rows(keyed, "cards") for v in row.values())
    assert any(r.path == "/v1/payment_intents/pi_day0" for r in stripe_fake.requests)


def test_an_unreadable_payment_intent_never_holds_the_day0_email_back(keyed, stripe_fake):
    stripe_fake.add_customer("cus_test_1", email="owner@example.com")
    assert deliver(keyed, _failure_naming("pi_missing")) == "processed"  # Stripe answers 404
    (email,) = email_rows(keyed)
    assert email["template"] == "payment-failed" and "the card on file" in email["body_text"]


# -- recovery in one message --------------------------------------------------------------
from tests.support.dunning import DAY, T0, paid, templates, tick  # noqa: E402
from tests.support.dunning import deliver as flow_deliver  # noqa: E402


@pytest.fixture(params=["sqlite", "postgres"])
def flow_runtime(make_runtime, request):
    return make_runtime(db=request.param)


def test_paid_while_disrupted_sends_one_email_received_and_restored_without_pay_wording(flow_runtime):
    flow_deliver(flow_runtime, failed("in_test_1", created=T0))
    tick(flow_runtime, T0 + 15 * DAY)
    before = len(templates(flow_runtime))
    flow_deliver(flow_runtime, paid("in_test_1", created=T0 + 16 * DAY))
    after = email_rows(flow_runtime)[before:]
    assert [e["template"] for e in after] == ["payment-received"]
    (email,) = after
    assert "restored" in email["subject"] and "has been restored" in email["body_text"]
    for part in (email["subject"], email["body_text"], email["body_html"]):
        words = re.sub(r"https://\S+|<[^>]+>", " ", part)  # the words an owner reads, not addresses
        assert not re.search(r"\bpay\b", words, re.IGNORECASE), part
    assert "View receipt" in email["body_text"]


def test_a_payment_link_on_the_invoice_page_claims_no_expiry():
    context = build_context(invoice=_invoice(), extra={"payment_link": {
        "url": "https://invoice.stripe.com/i/acct_1/test_x", "expires_at": datetime(2026, 12, 4, 15, 30)}})
    email = render("payment-link", context)
    assert "expires" not in email.text and "invoice's own payment page" in email.text


# -- their time -----------------------------------------------------------------------------
def _policy_raw() -> dict:
    import tomllib
    from config.settings import PROJECT_ROOT
    return tomllib.loads((PROJECT_ROOT / "config" / "policy.toml").read_text())


def test_deadlines_are_date_time_and_zone_in_the_owners_time_zone():
    from worker.pure.email_time import owner_timezone
    from handlers.policy import parse_policy
    policy = parse_policy({**_policy_raw(), "emails": {"timezone_metadata_key": "tz",
                                                      "default_timezone": "America/Los_Angeles"}})
    assert owner_timezone(policy, {"metadata": '{"tz": "Europe/Berlin"}'}) == "Europe/Berlin"
    assert owner_timezone(policy, {"metadata": {"tz": "Mars/Olympus"}}) == "America/Los_Angeles"
    assert owner_timezone(policy, None) == "America/Los_Angeles"
    case = _case(disrupt_at=datetime(2026, 12, 16, 17, 0), next_payment_attempt=datetime(2026, 12, 5, 2, 30))
    pacific = render("reminder", build_context(case=case, invoice=_invoice(), tz="America/Los_Angeles"))
    assert "December 16, 2026 at 09:00 PST" in pacific.text and "December 4, 2026 at 18:30 PST" in pacific.text
    berlin = render("reminder", build_context(case=case, invoice=_invoice(), tz="Europe/Berlin"))
    assert "December 16, 2026 at 18:00 CET" in berlin.text


def test_a_bad_default_time_zone_stops_the_policy_at_load():
    from handlers.policy import PolicyError, parse_policy
    with pytest.raises(PolicyError, match="default_timezone"):
        parse_policy({**_policy_raw(), "emails": {"default_timezone": "Europe/Nowhere"}})


def test_the_warning_states_the_disruption_in_the_customers_metadata_zone(make_runtime):
    runtime = make_runtime()
    event = failed()
    flow_deliver(runtime, event)
    (case,) = rows(runtime, "cases")
    customers = runtime.db.table("customers")
    with runtime.db.transaction() as conn:
        conn.execute(customers.update().values(metadata='{"timezone": "Asia/Tokyo"}'))
    tick(runtime, T0 + 3 * DAY)
    tick(runtime, T0 + 7 * DAY)
    warning = [e for e in email_rows(runtime) if e["template"] == "disruption-warning"]
    assert warning and re.search(r"disrupted\.?\s", warning[0]["body_text"])
    assert re.search(r"\d{4} at \d\d:\d\d JST", warning[0]["body_text"]) and " UTC" not in warning[0]["body_text"]


def test_compile_all_compiles_every_template_file_and_names_the_one_that_does_not(tmp_path):
    from worker.delivery.emails import PARTS, TEMPLATES, TEMPLATES_DIR, TemplateNotCompiled, compile_all, environment

    built_in = compile_all()
    # every email's three parts, plus the files they share (_base, _macros, _invoices)
    assert built_in >= 3 * len(TEMPLATES) + 2
    override = tmp_path / "override"
    (override / "reminder").mkdir(parents=True)
    (override / "reminder" / "body.txt").write_text("{{ greeting }\n")
    (override / "README.md").write_text("{% not a template %}\n")
    with pytest.raises(TemplateNotCompiled, match=r"reminder/body\.txt, line 1: "):
        compile_all(override)
    (override / "reminder" / "body.txt").write_text("Hello\n")
    assert compile_all(override) == built_in  # the same names: the override replaces one file
    cached = {name for _loader, name in environment(TEMPLATES_DIR, override).cache.keys()}
    assert {f"{email}/{part}" for email in TEMPLATES for part in PARTS} <= cached  # the first email compiles nothing
