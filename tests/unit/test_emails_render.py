"""Every email template renders completely, safely and readably, whatever the data."""

from __future__ import annotations

import re
from datetime import datetime
from email.parser import HeaderParser

import pytest
from jinja2 import UndefinedError

from worker.delivery.email_context import CARD_UPDATE_PATH, build_context
from worker.delivery.emails import TEMPLATES, TEMPLATES_DIR, environment, render

HOSTILE_NAME = "Ada <script>alert('x')</script>\nBcc: victim@example.com"
LONG_TEXT = "Your card was declined because " + "x" * 10_000


def _case(currency="usd", amount=2500, card=True, disrupt=True, **over):
    case = {
        "id": "dc_1", "invoice_id": "in_1", "customer_id": "cus_1", "subscription_id": "sub_1",
        "account_id": "sub_1", "state": "disruption_scheduled", "currency": currency,
        "amount_due": amount, "attempt_count": 2, "last_failure_message": LONG_TEXT,
        "next_payment_attempt": datetime(2026, 12, 3, 10, 0),
        "disrupt_at": datetime(2026, 12, 14) if disrupt else None,
        "card_brand": "visa" if card else None, "card_last4": "4242" if card else None,
        "recovered_amount": None,
    }
    case.update(over)
    return case


def _invoice(currency="usd", amount=2500, links=True, number="ABC-0001\r\nBcc: evil@example.com"):
    return {"id": "in_1", "number": number, "status": "open", "currency": currency,
            "amount_due": amount, "amount_remaining": amount, "customer_id": "cus_1",
            "hosted_invoice_url": "https://invoice.stripe.com/i/acct_1/test_x" if links else None,
            "invoice_pdf": "https://pay.stripe.com/invoice/acct_1/test_x/pdf" if links else None}


def _customer(name=HOSTILE_NAME):
    return {"id": "cus_1", "name": name, "email": "ada@example.com", "metadata": "{}"}


def _context(currency="usd", amount=2500, card=True, links=True, disrupt=True, extra=None):
    return build_context(case=_case(currency, amount, card, disrupt), invoice=_invoice(currency, amount, links),
                         customer=_customer(), card=None, extra=extra)


VARIANTS = [
    pytest.param("usd", 2500, True, True, True, id="usd-card-links"),
    pytest.param("jpy", 5000, True, True, True, id="jpy-card-links"),
    pytest.param("usd", 2500, False, False, False, id="usd-nothing-optional"),
    pytest.param("jpy", 5000, False, False, False, id="jpy-nothing-optional"),
]


@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize("currency, amount, card, links, disrupt", VARIANTS)
def test_every_template_renders_hostile_data_escaped_with_a_one_line_subject(
        template, currency, amount, card, links, disrupt):
    email = render(template, _context(currency, amount, card, links, disrupt))

    assert email.subject and "\n" not in email.subject and "\r" not in email.subject
    HeaderParser().parsestr(f"Subject: {email.subject}\n\n")  # a valid single header line
    assert "<script" not in email.html.lower()
    assert "Hello Ada &lt;script&gt;alert(" in email.html  # the name is shown, escaped, on one line
    assert "x" * 400 not in email.text and "x" * 400 not in email.html  # long texts are clipped
    for part in (email.text, email.html):
        assert "None" not in re.sub(r"<[^>]+>", "", part), "an unknown value leaked as 'None'"
        assert "{{" not in part and "{%" not in part


@pytest.mark.parametrize("template", TEMPLATES)
def test_every_template_says_what_next_and_what_to_do_in_both_parts(template):
    email = render(template, _context())
    assert "WHAT HAPPENS NEXT" in email.text and "WHAT TO DO" in email.text
    assert "What happens next" in email.html and "What to do" in email.html


@pytest.mark.parametrize("template", [t for t in TEMPLATES if t != "card-expiring"])
def test_invoice_emails_name_the_invoice_and_the_amount_in_both_parts(template):
    email = render(template, _context("jpy", 5000))
    for part in (email.text, email.html):
        assert "ABC-0001" in part
        assert "¥5,000" in part and "50.00" not in part


@pytest.mark.parametrize("template", ["payment-failed", "reminder", "disruption-warning", "final-notice",
                                      "service-disrupted", "card-declined-again"])
def test_failure_emails_show_the_card_the_retry_the_path_and_the_links(template):
    email = render(template, _context("usd", 2500))
    assert "Visa ending in 4242" in email.text and "Visa ending in 4242" in email.html
    assert CARD_UPDATE_PATH in email.text
    assert "Plans &amp; Billings" in email.html and "Payment Method" in email.html
    assert "https://invoice.stripe.com/i/acct_1/test_x" in email.text
    assert 'href="https://pay.stripe.com/invoice/acct_1/test_x/pdf"' in email.html
    assert "payment link" in email.text
    assert "December 14, 2026" in email.text  # the disruption date
    if template != "service-disrupted":
        assert "December 3, 2026" in email.text  # Stripe's next automatic retry


@pytest.mark.parametrize("template", TEMPLATES)
def test_ten_thousand_character_values_are_clipped_everywhere(template):
    context = build_context(case=_case(), invoice=_invoice(number="N" * 10_000), customer=_customer("A" * 10_000),
                            extra={"decline": {"message": "D" * 10_000}, "payment_link_url": "https://x.example/" + "p" * 10_000})
    email = render(template, context)
    assert len(email.subject) <= 200
    for part in (email.text, email.html):
        assert "A" * 81 not in part and "N" * 101 not in part and "D" * 301 not in part and "p" * 2001 not in part
    assert len(email.text) < 6_000


def test_without_card_or_links_the_emails_say_so_plainly():
    email = render("payment-failed", _context(card=False, links=False, disrupt=False))
    assert "the card on file" in email.text
    assert "https://" not in email.text and "href" not in email.html
    assert "disrupted" not in email.text.lower().split("what to do")[0]


def test_the_subject_stays_one_line_even_when_the_invoice_number_carries_a_header():
    email = render("payment-failed", _context())
    assert "\n" not in email.subject and "Bcc" in email.subject  # text kept, but on one line


@pytest.mark.parametrize("template", TEMPLATES)
def test_html_is_mobile_friendly_no_fixed_widths_and_no_images_without_alt(template):
    html = render(template, _context()).html
    assert 'name="viewport"' in html
    assert "max-width: 600px" in html
    for width in re.findall(r"(?<![-\w])width:\s*(\d+)px", html) + re.findall(r'width="(\d+)"', html):
        assert int(width) <= 375
    for img in re.findall(r"<img\b[^>]*>", html):
        assert re.search(r'\balt="', img)
    assert "<style" not in html.split("<body")[1]  # CSS inlined into the body


def test_css_is_inlined_into_the_elements():
    html = render("reminder", _context()).html
    assert re.search(r'<h1 style="[^"]*font-size', html)


def test_card_expiring_names_the_card_from_extra():
    context = build_context(customer=_customer("Grace"), extra={
        "card": {"brand": "mastercard", "last4": "4444", "exp_month": 1, "exp_year": 2027, "funding": "credit"}})
    email = render("card-expiring", context)
    assert email.subject == "Your Mastercard ending in 4444 expires at the end of 01/2027 - please update it"
    assert "Hello Grace," in email.text and CARD_UPDATE_PATH in email.text


def test_payment_link_shows_the_link_and_its_expiry():
    context = _context("usd", 250000, extra={"payment_link": {
        "url": "https://buy.stripe.com/test_abc", "expires_at": datetime(2026, 12, 4, 15, 30)},
        "payment_link_methods": ["Card", "Bank transfer (wire)"]})
    email = render("payment-link", context)
    assert "You can pay by: Card, Bank transfer (wire)." in email.text
    assert "https://buy.stripe.com/test_abc" in email.text
    assert 'href="https://buy.stripe.com/test_abc"' in email.html
    assert "December 4, 2026 at 3:30 PM UTC" in email.text


def test_unsafe_urls_never_reach_a_link():
    context = _context(extra={"action_url": "javascript:alert(1)", "payment_link_url": "https://x\n.evil"})
    email = render("action-required", context)
    assert "javascript:" not in email.html
    assert 'href="https://invoice.stripe.com/i/acct_1/test_x"' in email.html  # falls back to the invoice page


def test_card_declined_again_uses_the_new_card_and_the_decline_message():
    context = _context(extra={"card": {"brand": "amex", "last4": "0005"},
                              "decline": {"code": "card_declined", "decline_code": "insufficient_funds",
                                          "message": "Your card has insufficient funds."}})
    email = render("card-declined-again", context)
    assert "American Express ending in 0005" in email.subject
    assert "Your card has insufficient funds." in email.text


def test_a_misspelt_variable_is_an_error_not_a_blank():
    template = environment().from_string("Hello {{ owner_nmae }}")
    with pytest.raises(UndefinedError):
        template.render(build_context())


def test_text_templates_are_not_autoescaped_and_html_ones_are():
    context = _context()
    assert "<script>" in render("reminder", context).text
    env = environment()
    assert env.autoescape("payment-failed/body.html") and not env.autoescape("payment-failed/body.txt")


def test_every_template_folder_is_complete():
    for name in TEMPLATES:
        for part in ("subject.txt", "body.txt", "body.html"):
            assert (TEMPLATES_DIR / name / part).is_file(), f"{name}/{part}"
