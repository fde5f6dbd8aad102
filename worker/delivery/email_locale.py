"""The owner's language: which locale an email is written in, and its gettext catalogue.

Why: Stripe tells us the customer's `preferred_locales` (an ordered list of IETF tags such as
"de-AT", "pt-BR", "ja"); an owner reads a billing email best in that language (issue 14). The
first preference we have a catalogue for wins, matched by language when the region differs
("de-AT" -> de, "fr-CA" -> fr, "pt" or "pt-PT" -> pt_BR, our only Portuguese); when none matches,
the policy's `[emails] default_locale` (itself "en" by default) is used at render time.

    [emails]
    default_locale = "en"     # one of SUPPORTED

Catalogues are `worker/delivery/locale/<locale>/LC_MESSAGES/emails.po` (`make messages` extracts the strings
of the templates and of the Python modules that word emails, see babel.cfg, and updates them). They
are compiled in memory on first use (babel.messages.mofile), so no binary file is committed; fuzzy
and empty entries are left out, so an untranslated string shows in English, never blank.
"""

from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path
from typing import Any

from babel import Locale
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import NullTranslations, Translations

from worker.pure.locales import DEFAULT_LOCALE, SUPPORTED, normalize

LOCALE_DIR = Path(__file__).resolve().parent / "locale"
DOMAIN = "emails"
SOURCE_LOCALE = "en"  # msgids are English: English needs no catalogue
# The locale Babel formats money and dates with (a region fixes CLDR's choices: "December 16, 2026").
BABEL_LOCALES = {"en": "en_US", "de": "de_DE", "fr": "fr_FR", "es": "es_ES", "pt_BR": "pt_BR", "ja": "ja_JP"}
# <html lang="..."> and Content-Language: BCP 47 with a hyphen.
HTML_LANG = {"en": "en", "de": "de", "fr": "fr", "es": "es", "pt_BR": "pt-BR", "ja": "ja"}


def N_(message: str) -> str:
    """Mark a string for extraction (babel.cfg keyword); it is translated later, by locale."""
    return message


def babel_locale(locale: str | Locale | None) -> Locale:
    """Babel's Locale for an owner's language, made once per language: Babel's functions parse an
    identifier into a new Locale on every call, and an email formats a dozen amounts and dates."""
    if isinstance(locale, Locale):
        return locale
    return _babel(BABEL_LOCALES.get(normalize(locale) or DEFAULT_LOCALE, BABEL_LOCALES[DEFAULT_LOCALE]))


@lru_cache(maxsize=len(BABEL_LOCALES))
def _babel(identifier: str) -> Locale:
    return Locale.parse(identifier)


def catalogue_path(locale: str) -> Path:
    return LOCALE_DIR / locale / "LC_MESSAGES" / f"{DOMAIN}.po"


@lru_cache(maxsize=len(SUPPORTED))
def translations(locale: str | None) -> NullTranslations:
    """The compiled catalogue of a locale (English and unknown locales: the msgids themselves)."""
    locale = normalize(locale) or DEFAULT_LOCALE
    path = catalogue_path(locale)
    if locale == SOURCE_LOCALE or not path.exists():
        return NullTranslations()
    with path.open("rb") as po:
        catalog = read_po(po, locale=locale, domain=DOMAIN)
    compiled = io.BytesIO()
    write_mo(compiled, catalog, use_fuzzy=False)
    compiled.seek(0)
    return Translations(compiled, domain=DOMAIN)


def gettext(locale: str | None, message: str, **variables: Any) -> str:
    """`message` in `locale`, %(name)s placeholders filled (the same rule as the templates' _())."""
    text = translations(locale).gettext(message)
    return text % variables if variables else text
