"""Amounts as Stripe gives them (integer minor units) turned into what an owner should read.

Stripe's minor unit is not always a hundredth: zero-decimal currencies (JPY, KRW, ...) are sent
in whole units, so JPY 5000 is ¥5,000, never ¥50.00; a few are three-decimal (KWD, BHD, ...).
The exponent comes from Stripe's list (https://docs.stripe.com/currencies#zero-decimal); the
symbol, grouping and digits shown come from Babel (CLDR). ISK is two-decimal in Stripe's API
(an amount of 100 is one króna) although CLDR shows it without decimals: both rules apply.
"""

from __future__ import annotations

import re
from decimal import Decimal

from babel.core import UnknownLocaleError
from babel.numbers import UnknownCurrencyError, format_currency, get_currency_name

DEFAULT_LOCALE = "en_US"
_LETTER_THEN_DIGIT = re.compile(r"^(-?[A-Za-z]{2,})(\d)")

# https://docs.stripe.com/currencies#zero-decimal
ZERO_DECIMAL = frozenset({
    "bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv",
    "xaf", "xof", "xpf",
})
# https://docs.stripe.com/currencies#three-decimal
THREE_DECIMAL = frozenset({"bhd", "jod", "kwd", "omr", "tnd"})


def exponent(currency: str) -> int:
    """How many decimal digits Stripe's minor unit has for `currency` (0, 2 or 3)."""
    code = (currency or "").strip().lower()
    if code in ZERO_DECIMAL:
        return 0
    if code in THREE_DECIMAL:
        return 3
    return 2


def to_major(amount_minor: int, currency: str) -> Decimal:
    """Stripe's integer minor units -> a Decimal in major units (JPY 5000 -> 5000, USD 2500 -> 25)."""
    return Decimal(int(amount_minor)).scaleb(-exponent(currency))


def format_amount(amount_minor: int | None, currency: str | None, locale: str = DEFAULT_LOCALE) -> str:
    """'$25.00', '¥5,000', '€1,234.50': the symbol and grouping of `locale`.

    An unknown currency code still prints, as '12.34 XYZ', rather than breaking an email.
    """
    if amount_minor is None or not currency:
        return ""
    code = currency.strip().upper()
    value = to_major(amount_minor, code)
    try:
        text = format_currency(value, code, locale=locale)
    except (UnknownCurrencyError, UnknownLocaleError, ValueError):
        digits = exponent(code)
        return f"{value:,.{digits}f} {code}"
    # CLDR's currency spacing: a letter symbol is kept apart from the digits ('KWD 5.120').
    return _LETTER_THEN_DIGIT.sub("\\1\u00a0\\2", text, count=1)


def format_amount_with_code(amount_minor: int | None, currency: str | None,
                            locale: str = DEFAULT_LOCALE) -> str:
    """'$25.00 USD', '¥5,000 JPY': unambiguous where '$' could be several dollars."""
    text = format_amount(amount_minor, currency, locale)
    if not text:
        return ""
    code = (currency or "").strip().upper()
    return text if text.endswith(code) or text.startswith(code) else f"{text} {code}"


def currency_name(currency: str | None, locale: str = DEFAULT_LOCALE) -> str:
    """'US dollars', 'Japanese yen' (plural form), or the code when Babel does not know it."""
    if not currency:
        return ""
    code = currency.strip().upper()
    try:
        return get_currency_name(code, count=2, locale=locale)
    except (UnknownCurrencyError, UnknownLocaleError, ValueError):
        return code
