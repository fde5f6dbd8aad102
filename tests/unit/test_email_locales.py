"""Emails in the owner's language: complete catalogues, the locale Stripe's preferred_locales select,
money and deadlines as each locale writes them (issue 14)."""

from __future__ import annotations

import re
from datetime import datetime

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.pofile import read_po

from config.settings import PROJECT_ROOT
from worker.delivery.email_context import build_context, format_deadline
from worker.delivery.email_locale import catalogue_path
from worker.delivery.emails import TEMPLATES, render
from worker.pure.locales import SUPPORTED, choose_locale, default_locale, owner_locale

TRANSLATED = [locale for locale in SUPPORTED if locale != "en"]
PLACEHOLDER = re.compile(r"%\((\w+)\)s")


def _extracted_msgids() -> set[str]:
    """Every message of the templates and Python modules babel.cfg names, as `make messages` sees them."""
    with (PROJECT_ROOT / "babel.cfg").open() as cfg:
        method_map, options_map = parse_mapping_cfg(cfg)
    keywords = {"_": None, "N_": None, "gettext": None}
    return {message for _file, _line, message, _comments, _context in
            extract_from_dir(str(PROJECT_ROOT), method_map, options_map, keywords=keywords)
            if isinstance(message, str) and message}


@pytest.fixture(scope="module")
def msgids():
    found = _extracted_msgids()
    assert len(found) > 100  # the templates' words really were found
    return found


def test_the_extracted_strings_cover_the_templates_and_the_decline_advice(msgids):
    assert "What happens next" in msgids and "Your %(card)s has expired: payment failed for %(what)s" in msgids
    assert "The card has expired or its details are out of date." in msgids  # worker/delivery/decline_reasons.py
    assert "%(brand)s ending in %(last4)s" in msgids  # worker/delivery/email_context.py


@pytest.mark.parametrize("locale", TRANSLATED)
def test_every_catalogue_translates_every_string_with_the_same_placeholders(locale, msgids):
    with catalogue_path(locale).open("rb") as po:
        catalog = read_po(po, locale=locale)
    missing, empty, fuzzy, placeholders = [], [], [], []
    for msgid in sorted(msgids):
        message = catalog.get(msgid)
        if message is None:
            missing.append(msgid)
        elif not message.string or not message.string.strip():
            empty.append(msgid)
        elif message.fuzzy:
            fuzzy.append(msgid)
        elif sorted(PLACEHOLDER.findall(message.string)) != sorted(PLACEHOLDER.findall(msgid)):
            placeholders.append((msgid, message.string))
    assert (missing, empty, fuzzy, placeholders) == ([], [], [], []), "run `make messages` and translate"


@pytest.mark.parametrize("preferred, expected", [
    (["de"], "de"),
    (["de-AT", "en"], "de"),
    (["pt-BR"], "pt_BR"),
    (["pt_BR"], "pt_BR"),
    (["pt"], "pt_BR"),
    (["pt-PT"], "pt_BR"),
    (["zh-Hans", "fr-CA"], "fr"),
    (["ja-JP"], "ja"),
    (["ES"], "es"),
    (["zh", "ko"], None),
    ([], None),
    (None, None),
    ([None, 7, "x" * 100, "it"], None),
])
def test_the_first_supported_preferred_locale_wins(preferred, expected):
    assert choose_locale(preferred) == expected


def _policy(**emails):
    return type("Policy", (), {"raw": {"emails": emails}})()


def test_without_a_supported_preference_the_policy_default_applies_itself_english_by_default():
    assert owner_locale(_policy(), {"locale": None}) == "en"
    assert owner_locale(_policy(default_locale="fr"), {"locale": None}) == "fr"
    assert owner_locale(_policy(default_locale="fr"), {"locale": "ja"}) == "ja"
    assert owner_locale(None, None) == "en"
    with pytest.raises(ValueError, match="default_locale"):
        default_locale(_policy(default_locale="klingon"))


CASE = {"id": "dc_1", "invoice_id": "in_1", "customer_id": "cus_1", "state": "disruption_scheduled",
        "currency": "eur", "amount_due": 123456, "next_payment_attempt": datetime(2026, 12, 3, 10, 0),
        "disrupt_at": datetime(2026, 12, 16, 8, 0), "card_brand": "visa", "card_last4": "4242",
        "last_failure_code": "insufficient_funds"}
INVOICE = {"id": "in_1", "number": "ABC-0001", "status": "open", "currency": "eur", "amount_due": 123456,
           "amount_remaining": 123456, "hosted_invoice_url": "https://invoice.stripe.com/i/acct_1/test_x",
           "invoice_pdf": "https://pay.stripe.com/invoice/acct_1/test_x/pdf"}


def _render(template, locale, tz="Europe/Berlin", extra=None):
    context = build_context(case=CASE, invoice=INVOICE, customer={"id": "cus_1", "name": "Ada"},
                            locale=locale, tz=tz, extra=extra)
    return render(template, context)


@pytest.mark.parametrize("locale, money, deadline", [
    ("de", "1.234,56 €", "16. Dezember 2026 um 09:00 MEZ"),
    ("fr", "1 234,56 €", "16 décembre 2026 à 09:00 CET"),
    ("es", "1.234,56 €", "16 de diciembre de 2026 a las 09:00 CET"),
    ("pt_BR", "€ 1.234,56", "16 de dezembro de 2026 às 09:00 CET"),
    ("ja", "€1,234.56", "2026年12月16日 09:00（CET）"),
    ("en", "€1,234.56", "December 16, 2026 at 09:00 CET"),
])
def test_money_and_deadlines_are_written_the_way_each_locale_writes_them(locale, money, deadline):
    email = _render("disruption-warning", locale)
    for part in (email.text, email.subject):
        plain = part.replace("\u00a0", " ").replace("\u202f", " ")
        assert money in plain or part is email.subject
        assert deadline in plain


@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize("locale", TRANSLATED)
def test_every_template_renders_in_every_locale_without_english_headings(template, locale):
    email = _render(template, locale)
    assert email.subject and "\n" not in email.subject
    assert "What happens next" not in email.html and "WHAT HAPPENS NEXT" not in email.text
    assert "Hello" not in email.text and "invoice" not in email.subject.lower()
    assert f'<html lang="{locale.replace("_", "-")}">' in email.html
    assert "ABC-0001" in email.text and "%(" not in email.text + email.html + email.subject


@pytest.mark.parametrize("locale, heading, total", [
    ("de", "Offene Rechnungen auf Ihrem Konto", "Offener Gesamtbetrag:"),
    ("fr", "Factures impayées sur votre compte", "Total dû :"),
    ("es", "Facturas pendientes de pago en su cuenta", "Total adeudado:"),
    ("pt_BR", "Faturas em aberto na sua conta", "Total devido:"),
    ("ja", "お客様のアカウントの未払い請求書", "未払い合計："),
])
def test_an_account_emails_list_of_unpaid_invoices_is_in_the_owners_language(locale, heading, total):
    """Issue 14's list (templates/emails/_invoices.*) is worded and punctuated like the rest of the email."""
    from worker.delivery.account_emails import format_total
    listed = [{"invoice_id": f"in_{n}", "number": f"ABC-000{n}", "amount": f"{n} EUR", "url": None} for n in (1, 2)]
    email = _render("reminder", locale,
                    extra={"invoices": listed, "invoice_totals": [format_total(123456, "eur", locale)]})
    assert heading in email.html and heading.upper() in email.text
    assert total in email.text and "Total owed" not in email.text + email.html
    assert "Unpaid invoices" not in email.html and "UNPAID INVOICES" not in email.text


def test_the_decline_advice_is_translated():
    assert "unzureichender Deckung" in _render("reminder", "de").text
    assert "残高不足" in _render("payment-failed", "ja").text


def test_a_deadline_without_a_zone_abbreviation_in_the_locale_keeps_tzdatas():
    assert format_deadline(datetime(2026, 12, 16, 17, 0), "America/Los_Angeles", "de") == \
        "16. Dezember 2026 um 09:00 PST"
    assert format_deadline(datetime(2026, 12, 16, 0, 0), "Asia/Tokyo", "ja") == "2026年12月16日 09:00（JST）"


# -- the acceptance, through the real pipeline: Stripe's customer -> the case's emails ------------------
from tests.support.fake_stripe import FakeStripe, FakeStripeServer  # noqa: E402
from tests.support.dunning import DAY, T0, emails, failed, tick  # noqa: E402
from tests.support.dunning import _store_and_process as deliver  # noqa: E402
from tests.support.helpers import make_event, rows  # noqa: E402

API_KEY = "sk_test_" + "l" * 24


def _customer_event(event_type="customer.created", locales=("de",), created=T0 - 2000, **metadata):
    owner = {"id": "cus_test_1", "object": "customer", "email": "owner@example.com", "name": "Ada",
             "metadata": {"timezone": "Europe/Berlin", **metadata}, "preferred_locales": list(locales),
             "invoice_settings": {"default_payment_method": None}, "default_source": None}
    return make_event(event_type, owner, event_id=f"evt_{event_type}_{created}", created=created)


@pytest.fixture(params=["sqlite", "postgres"])
def runtime(make_runtime, request):
    return make_runtime(db=request.param)


def test_a_german_speaking_owner_in_berlin_reads_german_euros_and_berlin_deadlines(runtime):
    assert deliver(runtime, _customer_event()) == "processed"
    assert rows(runtime, "customers", id="cus_test_1")[0]["locale"] == "de"
    deliver(runtime, failed(amount=123456, currency="eur"))
    tick(runtime, T0 + 3 * DAY)
    tick(runtime, T0 + 7 * DAY)
    sent = {e["template"]: e for e in emails(runtime)}
    day0, warning = sent["payment-failed"], sent["disruption-warning"]
    assert day0["subject"].startswith("Zahlung fehlgeschlagen: 1.234,56 €")  # a subject is one line of plain spaces
    for part in (day0["body_text"], day0["body_html"]):
        assert "Guten Tag Ada," in part and "Wie es weitergeht" in part.replace("WIE ES WEITERGEHT", "Wie es weitergeht")
        assert "1.234,56 €" in part.replace("&nbsp;", " ").replace("\u00a0", " ")
    assert 'lang="de"' in day0["body_html"]
    # the deadline: date, time and zone in Berlin (MEZ is CET's German name)
    assert re.search(r"\d{1,2}\. \w+ 2026 um \d\d:\d\d MEZ", warning["subject"]), warning["subject"]
    assert re.search(r"nun für den \d{1,2}\. \w+ 2026 um \d\d:\d\d MEZ geplant", warning["body_text"]), warning["body_text"]
    assert "Handlungsbedarf" in warning["subject"] and " UTC" not in warning["body_text"]
    words = re.sub(r"https://\S+", " ", day0["body_text"] + warning["body_text"])  # no English left but links
    assert not re.search(r"\b(the|your|invoice|payment)\b", words, re.IGNORECASE)


def test_an_email_keeps_the_language_it_was_written_in_and_the_next_follows_the_new_preference(runtime):
    deliver(runtime, _customer_event(locales=("fr-CA", "en")))
    deliver(runtime, failed())
    deliver(runtime, _customer_event("customer.updated", locales=("ja",), created=T0 + DAY))
    tick(runtime, T0 + 3 * DAY)
    day0, reminder = emails(runtime)[:2]
    assert day0["subject"].startswith("Échec du paiement")
    assert reminder["template"] == "reminder" and reminder["subject"].startswith("【リマインダー】")


def test_a_customer_without_a_supported_preference_reads_the_policy_default(make_runtime, tmp_path):
    import tomllib
    policy = (PROJECT_ROOT / "config" / "policy.toml").read_text().replace(
        'default_locale = "en"', 'default_locale = "es"')
    assert tomllib.loads(policy)["emails"]["default_locale"] == "es"
    (tmp_path / "policy.toml").write_text(policy)
    runtime = make_runtime(DUNNING_POLICY=str(tmp_path / "policy.toml"))
    deliver(runtime, _customer_event(locales=("zh-Hant", "ko")))
    assert rows(runtime, "customers", id="cus_test_1")[0]["locale"] is None
    deliver(runtime, failed())
    (day0,) = emails(runtime)
    assert day0["subject"].startswith("Pago fallido") and "Hola, Ada:" in day0["body_text"]


@pytest.fixture
def stripe_fake():
    with FakeStripeServer(FakeStripe(api_key=API_KEY)) as served:
        yield served


def test_the_day0_read_of_the_customer_from_stripe_brings_its_preferred_locale(make_runtime, stripe_fake):
    runtime = make_runtime(STRIPE_API_KEY=API_KEY, STRIPE_API_BASE=stripe_fake.base_url)
    stripe_fake.add_customer("cus_test_1", email="owner@example.com")["preferred_locales"] = ["pt-BR", "en"]
    assert deliver(runtime, failed(amount=4900, currency="brl")) == "processed"
    assert rows(runtime, "customers", id="cus_test_1")[0]["locale"] == "pt_BR"
    (day0,) = emails(runtime)
    assert day0["subject"].startswith("Falha no pagamento: R$ 49,00")
    assert "Não conseguimos cobrar o pagamento" in day0["body_text"]


def test_a_customer_payload_without_preferred_locales_keeps_the_language_known(runtime):
    deliver(runtime, _customer_event(locales=("es",)))
    later = _customer_event("customer.updated", created=T0 - 1000)
    del later["data"]["object"]["preferred_locales"]
    deliver(runtime, later)
    assert rows(runtime, "customers", id="cus_test_1")[0]["locale"] == "es"
    deliver(runtime, _customer_event("customer.updated", locales=(), created=T0 - 500))
    assert rows(runtime, "customers", id="cus_test_1")[0]["locale"] is None



def test_a_message_is_formatted_only_when_there_is_something_to_put_in():
    """_() returns a message with no variable and no `%` as it is, as markup in HTML (a translator's
    `&` is not escaped), and still formats one that has either: `%%` is a percent sign, variables
    are put in, and escaped in HTML."""
    from worker.delivery.emails import environment

    source = "{{ _('Terms & conditions') }} / {{ _('100%% safe: %(who)s', who=who) }} / {{ _('%%') }}"
    plain = environment().from_string(source)
    assert plain.render(who="<b>Ada</b>") == "Terms & conditions / 100% safe: <b>Ada</b> / %"
    html = environment().overlay(autoescape=True).from_string(source)
    assert html.render(who="<b>Ada</b>") == "Terms & conditions / 100% safe: &lt;b&gt;Ada&lt;/b&gt; / %"


@pytest.mark.parametrize("locale", ["en", "de"])
def test_an_email_renders_without_copies_of_its_context_and_in_the_same_words(monkeypatch, locale):
    """render() gives each part its own gettext (`translators`: one language, escaped or not), so
    Jinja2 derives no copy of the whole context for a message in a block with variables of its own,
    as it does for a function that takes the context (80 copies for the 11 emails before; issue 17).
    The globals that read the locale from the context, for a template rendered another way, say the
    same."""
    import jinja2.runtime

    from worker.delivery.email_previews import VARIANTS, render_variant
    from worker.delivery.emails import environment, translators

    copies = []
    derived = jinja2.runtime.Context.derived
    monkeypatch.setattr(jinja2.runtime.Context, "derived",
                        lambda self, *args, **kwargs: copies.append(1) or derived(self, *args, **kwargs))
    for template in TEMPLATES:
        render_variant(template, VARIANTS[0], locale=locale)
    assert copies == []

    source = ("{% trans n=2 %}{{ n }} days{% endtrans %} / {{ _('Update your card') }} / "
              "{{ ngettext('%(num)s day', '%(num)s days', 3) }}")
    for escaped in (False, True):
        env = environment().overlay(autoescape=escaped)
        by_context = env.from_string(source).render(locale=locale)
        by_part = env.from_string(source).render(locale=locale, **translators(locale, escaped))
        assert by_part == by_context
        assert ("Karte" in by_part) == (locale == "de")
