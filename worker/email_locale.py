"""The owner's language: which locale an email is written in, and its gettext catalogue.

Why: Stripe tells us the customer's `preferred_locales` (an ordered list of IETF tags such as
"de-AT", "pt-BR", "ja"); an owner reads a billing email best in that language (issue 14). The
first preference we have a catalogue for wins, matched by language when the region differs
("de-AT" -> de, "fr-CA" -> fr, "pt" or "pt-PT" -> pt_BR, our only Portuguese); when none matches,
the policy's `[emails] default_locale` (itself "en" by default) is used at render time.

    [emails]
    default_locale = "en"     # one of SUPPORTED

Catalogues are `worker/locale/<locale>/LC_MESSAGES/emails.po` (`make messages` extracts the strings
of the templates and of the Python modules that word emails, see babel.cfg, and updates them). They
are compiled in memory on first use (babel.messages.mofile), so no binary file is committed; fuzzy
and empty entries are left out, so an untranslated string shows in English, never blank.
"""

from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import NullTranslations, Translations

LOCALE_DIR = Path(__file__).resolve().parent / "locale"
DOMAIN = "emails"
SOURCE_LOCALE = "en"  # msgids are English: English needs no catalogue
SUPPORTED = ("en", "de", "fr", "es", "pt_BR", "ja")
DEFAULT_LOCALE = "en"
# The locale Babel formats money and dates with (a region fixes CLDR's choices: "December 16, 2026").
BABEL_LOCALES = {"en": "en_US", "de": "de_DE", "fr": "fr_FR", "es": "es_ES", "pt_BR": "pt_BR", "ja": "ja_JP"}
# A language we have in one region only: any region of it reads that one.
LANGUAGE_FALLBACK = {"pt": "pt_BR"}
# <html lang="..."> and Content-Language: BCP 47 with a hyphen.
HTML_LANG = {"en": "en", "de": "de", "fr": "fr", "es": "es", "pt_BR": "pt-BR", "ja": "ja"}


def N_(message: str) -> str:
    """Mark a string for extraction (babel.cfg keyword); it is translated later, by locale."""
    return message


def normalize(tag: Any) -> str | None:
    """A supported locale for one IETF/POSIX tag ("pt-BR", "pt_br", "de-AT", "ja"), else None."""
    if not isinstance(tag, str):
        return None
    parts = [p for p in tag.strip().replace("_", "-").split("-") if p]
    if not parts or len(tag) > 35:
        return None
    language = parts[0].lower()
    region = next((p.upper() for p in parts[1:] if len(p) == 2 and p.isalpha()), None)
    if region and f"{language}_{region}" in SUPPORTED:
        return f"{language}_{region}"
    if language in SUPPORTED:
        return language
    return LANGUAGE_FALLBACK.get(language)


def choose_locale(preferred: Iterable[Any] | None) -> str | None:
    """The first of the customer's preferred_locales we support; None when none is (or none given)."""
    if isinstance(preferred, str):
        preferred = [preferred]
    for tag in preferred or ():
        locale = normalize(tag)
        if locale:
            return locale
    return None


def default_locale(policy: Any) -> str:
    """The policy's [emails] default_locale ("en" when unset); raises ValueError when unsupported."""
    body = ((getattr(policy, "raw", None) or {}).get("emails") or {}) if policy is not None else {}
    value = body.get("default_locale", DEFAULT_LOCALE)
    locale = normalize(value)
    if locale is None:
        raise ValueError(f"[emails] default_locale must be one of {', '.join(SUPPORTED)}, got {value!r}")
    return locale


def owner_locale(policy: Any, customer: dict | None) -> str:
    """The locale an email to this owner is written in: the stored choice, else the policy default."""
    stored = normalize((customer or {}).get("locale"))
    return stored or default_locale(policy)


def babel_locale(locale: str | None) -> str:
    return BABEL_LOCALES.get(normalize(locale) or DEFAULT_LOCALE, BABEL_LOCALES[DEFAULT_LOCALE])


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
