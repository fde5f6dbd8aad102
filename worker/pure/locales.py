"""Which locales an email can be written in, and how an owner's preference picks one (issue 14).

Pure vocabulary, so the domain (handlers/) can store a customer's choice and check the policy's
`[emails] default_locale` without reaching into delivery; the catalogues and the rendering live in
worker/delivery/email_locale.py.
"""

from __future__ import annotations

from typing import Any, Iterable

SUPPORTED = ("en", "de", "fr", "es", "pt_BR", "ja")
DEFAULT_LOCALE = "en"
# A language we have in one region only: any region of it reads that one.
LANGUAGE_FALLBACK = {"pt": "pt_BR"}


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
