"""Email previews in headless Chromium at phone and desktop widths: no overflow, no broken image or link."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from click.testing import CliRunner

from worker.cli import main
from worker.delivery.email_previews import (
    DECLINE_CODES,
    DECLINE_TEMPLATES,
    LOCALE_DECLINE_CODES,
    LOCALE_VARIANTS,
    VARIANTS,
    preview_count,
)
from worker.delivery.emails import TEMPLATES
from worker.pure.locales import SUPPORTED

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
WIDTHS = (375, 1024)
PHONE_FOLD = 667  # an iPhone SE's viewport height: the main button must be visible without scrolling
OTHER_LOCALES = [locale for locale in SUPPORTED if locale != "en"]
PREVIEW_COUNT = (len(TEMPLATES) * len(VARIANTS) + len(DECLINE_TEMPLATES) * len(DECLINE_CODES)
                 + len(OTHER_LOCALES) * (len(TEMPLATES) * len(LOCALE_VARIANTS)
                                         + len(DECLINE_TEMPLATES) * len(LOCALE_DECLINE_CODES)))

# Runs in the page: what a reader would notice.
INSPECT = """() => ({
  overflow: document.scrollingElement.scrollWidth - window.innerWidth,
  brokenImages: [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src),
  links: [...document.querySelectorAll('a[href]')].map(a => a.href),
  buttons: [...document.querySelectorAll('a.button')].map(a => {
    const r = a.getBoundingClientRect(); return {href: a.getAttribute('href'), bottom: r.bottom, width: r.width}; }),
})"""


@pytest.fixture(scope="module")
def previews(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("previews")
    result = CliRunner().invoke(main, ["emails", "preview", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    return out


def test_preview_writes_every_template_in_every_variant_as_html_and_text(previews):
    index = (previews / "index.html").read_text()
    for template in TEMPLATES:
        for variant in VARIANTS:
            html = previews / template / f"{variant.name}.html"
            text = previews / template / f"{variant.name}.txt"
            assert html.is_file() and text.is_file()
            assert f'href="{template}/{variant.name}.html"' in index
            assert f'href="{template}/{variant.name}.txt"' in index
            assert text.read_text().startswith("Subject: ")
    assert {v.currency for v in VARIANTS} == {"usd", "jpy"}
    assert {(v.with_card, v.disrupted) for v in VARIANTS} == {(True, True), (True, False), (False, True),
                                                              (False, False)}


def test_previews_show_the_currency_and_card_they_were_made_for(previews):
    usd = (previews / "payment-failed" / "usd-card-before-disruption.txt").read_text()
    jpy = (previews / "payment-failed" / "jpy-no-card-after-disruption.txt").read_text()
    assert "$42.00" in usd and "4242" in usd
    assert "¥5,000" in jpy and "4242" not in jpy and "¥5,000.00" not in jpy


def test_preview_json_lists_what_it_wrote(tmp_path):
    result = CliRunner().invoke(main, ["emails", "preview", "--out", str(tmp_path), "--json"])
    data = json.loads(result.output)
    assert len(data["emails"]) == PREVIEW_COUNT == preview_count()
    assert {e["locale"] for e in data["emails"]} == set(SUPPORTED)
    assert all((tmp_path / e["html"]).is_file() for e in data["emails"])


@pytest.mark.browser
@pytest.mark.slow
def test_every_preview_fits_phone_and_desktop_widths_with_no_broken_image_or_link(previews):
    if not CHROMIUM.exists():
        pytest.skip("Chromium is not installed at /usr/bin/chromium")
    from playwright.sync_api import sync_playwright
    pages = [previews / "index.html"] + sorted(p for p in previews.rglob("*.html") if p.name != "index.html")
    assert len(pages) == 1 + PREVIEW_COUNT
    problems = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            for width in WIDTHS:
                page = browser.new_page(viewport={"width": width, "height": 900})
                # Nothing leaves the machine: remote links are checked for shape, not fetched.
                page.route("http*://**", lambda route: route.abort())
                for path in pages:
                    page.goto(path.as_uri(), wait_until="load")
                    found = page.evaluate(INSPECT)
                    name = f"{path.relative_to(previews)} @ {width}px"
                    if found["overflow"] > 0:
                        problems.append(f"{name}: overflows horizontally by {found['overflow']} px")
                    if path.name != "index.html":
                        if len(found["buttons"]) > 1:
                            problems.append(f"{name}: {len(found['buttons'])} buttons, one primary action expected")
                        text = path.with_suffix(".txt").read_text()
                        for button in found["buttons"]:
                            if width == 375 and button["bottom"] > PHONE_FOLD:
                                problems.append(f"{name}: the button ends at {button['bottom']:.0f} px, below the fold")
                            if button["width"] <= 0:
                                problems.append(f"{name}: the button is not visible")
                            if button["href"] not in text:
                                problems.append(f"{name}: the text part lacks the button's link {button['href']}")
                    for src in found["brokenImages"]:
                        problems.append(f"{name}: broken image {src}")
                    for href in found["links"]:
                        target = urlparse(href)
                        if target.scheme == "file":
                            if not Path(unquote(target.path)).is_file():
                                problems.append(f"{name}: link to a missing file {href}")
                        elif target.scheme not in ("https", "mailto"):
                            problems.append(f"{name}: link that is neither https nor a file: {href}")
                page.close()
        finally:
            browser.close()
    assert not problems, "\n".join(problems)


@pytest.mark.browser
def test_the_overflow_check_catches_a_page_wider_than_a_phone(tmp_path):
    """The check above can fail: a fixed 600 px table overflows a 375 px screen."""
    if not CHROMIUM.exists():
        pytest.skip("Chromium is not installed at /usr/bin/chromium")
    from playwright.sync_api import sync_playwright
    wide = tmp_path / "wide.html"
    wide.write_text('<!DOCTYPE html><meta name="viewport" content="width=device-width">'
                    '<table style="width:600px"><tr><td>x</td></tr></table><img src="missing.png">')
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 375, "height": 900})
            page.goto(wide.as_uri())
            found = page.evaluate(INSPECT)
        finally:
            browser.close()
    assert found["overflow"] > 0 and found["brokenImages"]


def test_previews_cover_every_decline_group_with_its_advice(previews):
    from worker.delivery.decline_reasons import ADVICE, group_of
    for template in DECLINE_TEMPLATES:
        for code in DECLINE_CODES:
            text = (previews / template / f"{VARIANTS[0].name}-{code}.txt").read_text()
            assert ADVICE[group_of(code)][0] in text


@pytest.mark.parametrize("locale", OTHER_LOCALES)
def test_every_template_is_previewed_in_every_locale_with_a_complete_text_part(previews, locale):
    """The text part says all the HTML part says: its headings, the invoice, the button's link."""
    import re
    for template in TEMPLATES:
        for variant in LOCALE_VARIANTS:
            html = (previews / template / locale / f"{variant.name}.html").read_text()
            text = (previews / template / locale / f"{variant.name}.txt").read_text()
            assert f'<html lang="{locale.replace("_", "-")}">' in html
            assert "PREVIEW-" in text and "What happens next" not in html
            for heading in re.findall(r"<h2[^>]*>([^<]+)</h2>", html):
                assert heading.upper() in text, (template, locale, heading)
            for href in re.findall(r'<a class="button" href="([^"]+)"', html):
                assert href.replace("&amp;", "&") in text
    for template in DECLINE_TEMPLATES:
        for code in LOCALE_DECLINE_CODES:
            assert (previews / template / locale / f"{VARIANTS[0].name}-{code}.html").is_file()
