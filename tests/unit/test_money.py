"""Amounts in Stripe's minor units, formatted with each currency's own exponent."""

from __future__ import annotations

from decimal import Decimal

import pytest

from worker.pure.money import currency_name, exponent, format_amount, format_amount_with_code, to_major


@pytest.mark.parametrize("currency, expected", [
    ("usd", 2), ("EUR", 2), ("jpy", 0), ("krw", 0), ("vnd", 0), ("clp", 0), ("xof", 0),
    ("kwd", 3), ("bhd", 3), ("isk", 2), ("huf", 2),
])
def test_the_exponent_follows_stripes_currency_lists(currency, expected):
    assert exponent(currency) == expected


def test_a_jpy_invoice_of_5000_is_five_thousand_yen_not_fifty():
    assert to_major(5000, "jpy") == Decimal(5000)
    assert format_amount(5000, "jpy") == "¥5,000"
    assert format_amount_with_code(5000, "jpy") == "¥5,000 JPY"
    assert "50.00" not in format_amount_with_code(5000, "jpy")


@pytest.mark.parametrize("amount, currency, expected", [
    (2500, "usd", "$25.00"),
    (123456789, "usd", "$1,234,567.89"),
    (99, "gbp", "£0.99"),
    (123450, "eur", "€1,234.50"),
    (0, "usd", "$0.00"),
    (1500000, "krw", "₩1,500,000"),
])
def test_amounts_get_the_symbol_and_grouping_of_the_currency(amount, currency, expected):
    assert format_amount(amount, currency) == expected


def test_three_decimal_currencies_keep_three_digits_and_a_space_after_a_letter_symbol():
    assert format_amount(5120, "kwd") == "KWD\u00a05.120"


def test_isk_is_two_decimal_in_stripes_api_although_shown_without_decimals():
    assert format_amount(10000, "isk") == "ISK\u00a0100"


def test_the_code_is_appended_once_for_unambiguous_dollars():
    assert format_amount_with_code(2500, "usd") == "$25.00 USD"
    assert format_amount_with_code(100000, "cad") == "CA$1,000.00 CAD"
    assert format_amount_with_code(5120, "kwd") == "KWD\u00a05.120"


def test_unknown_or_missing_values_never_break_an_email():
    assert format_amount(None, "usd") == ""
    assert format_amount(100, None) == ""
    assert format_amount(1234, "xyz").replace("\u00a0", " ") == "XYZ 12.34"


def test_currency_names_are_plural_for_sentences():
    assert currency_name("jpy") == "Japanese yen"
    assert currency_name("usd") == "US dollars"
