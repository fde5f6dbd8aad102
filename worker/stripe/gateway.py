"""The only module that talks to the Stripe API: a small gateway with the few calls we make.

Why a gateway: handlers do no network I/O; the jobs that must call Stripe (prepare a payment
link, retry an invoice with a new card, backfill events) call it through this one interface, built once per
process from the settings (`runtime.service("stripe", ...)`). Tests point STRIPE_API_BASE at a
local server (tests/fake_stripe.py or localstripe); nothing here is patched.

Every POST carries an idempotency key the caller derives from its own row (a payment-link
request, a card retry), so a job retried after a crash or a timeout never acts twice at Stripe.
GETs send no parameters at all (no `expand`): fewer ways to disagree with an API version.

Errors are sorted once, here, into what the callers need to decide:
  CardDeclined      the bank said no (402): a result to record, never retried by us.
  StripeRejected    Stripe refused the request (4xx): permanent, keep the message.
  StripeUnavailable network, rate limit, 5xx: transient, let the actor retry (same key).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import stripe
import structlog

log = structlog.get_logger("worker.stripe.gateway")

CONNECT_TIMEOUT_SECONDS = 5
READ_TIMEOUT_SECONDS = 30
MAX_NETWORK_RETRIES = 2  # the library reuses our idempotency key on its own retries

# Bank transfer (customer_balance funding) needs the transfer network of the invoice currency.
# EUR is left out on purpose: eu_bank_transfer also needs the account country, which we don't know.
BANK_TRANSFER_TYPES = {
    "usd": "us_bank_transfer",
    "gbp": "gb_bank_transfer",
    "jpy": "jp_bank_transfer",
    "mxn": "mx_bank_transfer",
}


class StripeGatewayError(Exception):
    """Base of the errors raised by the gateway."""


class StripeNotConfigured(StripeGatewayError):
    """Raised when STRIPE_API_KEY is not set: the job cannot run (permanent)."""


class StripeUnavailable(StripeGatewayError):
    """Raised when Stripe could not be reached or asked us to slow down (retry later, same key)."""


class StripeRejected(StripeGatewayError):
    """Raised when Stripe refused the request (invalid, already paid, not found): permanent."""

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.code = code
        self.status = status


@dataclass(frozen=True)
class Decline:
    code: str | None
    decline_code: str | None
    message: str | None


class CardDeclined(StripeGatewayError):
    """Raised when the bank declined the charge (HTTP 402 card_error): a result, not a fault."""

    def __init__(self, decline: Decline):
        super().__init__(decline.message or decline.code or "card declined")
        self.decline = decline


def payment_method_types_for(amount_due: int, currency: str, bank_minimums: dict[str, int]) -> list[str]:
    """Card always; ACH debit and bank transfer only from the configured minimum of the currency.

    ACH Direct Debit (`us_bank_account`) exists for USD only; bank transfer (`customer_balance`
    funded by `bank_transfer`) needs a transfer network for the currency (BANK_TRANSFER_TYPES).
    """
    currency = (currency or "").lower()
    methods = ["card"]
    minimum = bank_minimums.get(currency)
    if minimum is None or amount_due < minimum:
        return methods
    if currency == "usd":
        methods.append("us_bank_account")
    if currency in BANK_TRANSFER_TYPES:
        methods.append("customer_balance")
    return methods


def payment_settings_params(methods: list[str], currency: str) -> dict[str, Any]:
    """The `payment_settings` of POST /v1/invoices/:id that offers exactly `methods` on the hosted page."""
    settings: dict[str, Any] = {"payment_method_types": list(methods)}
    if "customer_balance" in methods:
        settings["payment_method_options"] = {"customer_balance": {
            "funding_type": "bank_transfer",
            "bank_transfer": {"type": BANK_TRANSFER_TYPES[currency.lower()]},
        }}
    return settings


def _payment_param(payment_method_id: str) -> dict[str, str]:
    """Legacy Sources (src_...) go in `source`; PaymentMethods and Cards (pm_, card_) in `payment_method`."""
    if payment_method_id.startswith("src_"):
        return {"source": payment_method_id}
    return {"payment_method": payment_method_id}


def _as_dict(obj: Any) -> dict:
    return obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)


def _page_events(page) -> list[dict]:
    """The events of a list page as Stripe sent them (the response's own JSON, not the typed
    objects, whose decimals and nested types would not serialize back to the same payload)."""
    response = getattr(page, "last_response", None)
    if response is not None and isinstance(response.data, dict) and "data" in response.data:
        return list(response.data["data"])
    return [event.to_dict() for event in page.data]


def _error_body(exc: stripe.StripeError) -> dict:
    body = exc.json_body if isinstance(exc.json_body, dict) else {}
    error = body.get("error")
    return error if isinstance(error, dict) else {}


# The Stripe API version this service speaks, set here and only here (README "Stripe API version").
# Upgrading the stripe package no longer changes the objects we read: its default version is not
# used. Webhook events carry the version of the endpoint that sent them (`api_version`); whatever
# it is, they are read through handlers/stripe_objects.py, tested against every version in the
# shared corpus. Change it deliberately, with the adapters and a new endpoint (`dunning stripe
# webhook-endpoint create`).
STRIPE_API_VERSION = "2026-10-28.endive"


class StripeGateway:
    """The calls the dunning worker makes to Stripe; one instance per process."""

    def __init__(self, api_key: str, api_base: str | None = None, *,
                 max_network_retries: int = MAX_NETWORK_RETRIES,
                 timeout: tuple[float, float] = (CONNECT_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS)):
        kwargs: dict[str, Any] = {
            "max_network_retries": max_network_retries,
            "http_client": stripe.RequestsClient(timeout=timeout),
        }
        if api_base:
            kwargs["base_addresses"] = {"api": api_base}
        self.client = stripe.StripeClient(api_key, stripe_version=STRIPE_API_VERSION, **kwargs)

    # -- set-up -----------------------------------------------------------------------------
    def create_webhook_endpoint(self, url: str, events: list[str], idempotency_key: str) -> dict:
        """A webhook endpoint for `events` at our pinned API version; the answer holds its secret."""
        return self._call("webhook_endpoints.create", lambda: self.client.v1.webhook_endpoints.create(
            {"url": url, "enabled_events": events, "api_version": STRIPE_API_VERSION,
             "description": "dunning worker"}, {"idempotency_key": idempotency_key}))

    # -- reads ------------------------------------------------------------------------------
    def retrieve_invoice(self, invoice_id: str) -> dict:
        return self._call("invoices.retrieve", lambda: self.client.v1.invoices.retrieve(invoice_id))

    def retrieve_customer(self, customer_id: str) -> dict:
        return self._call("customers.retrieve", lambda: self.client.v1.customers.retrieve(customer_id))

    def retrieve_subscription(self, subscription_id: str) -> dict:
        return self._call("subscriptions.retrieve",
                          lambda: self.client.v1.subscriptions.retrieve(subscription_id))

    def retrieve_payment_method(self, payment_method_id: str) -> dict:
        return self._call("payment_methods.retrieve",
                          lambda: self.client.v1.payment_methods.retrieve(payment_method_id))

    def retrieve_payment_intent(self, payment_intent_id: str) -> dict:
        return self._call("payment_intents.retrieve",
                          lambda: self.client.v1.payment_intents.retrieve(payment_intent_id))

    def list_events(self, types: list[str], created_gte: int, limit: int,
                    starting_after: str | None = None) -> tuple[list[dict], bool]:
        """One page of GET /v1/events (newest first): the events as Stripe sent them, and has_more."""
        params: dict[str, Any] = {"types": types, "created": {"gte": created_gte}, "limit": limit}
        if starting_after:
            params["starting_after"] = starting_after
        page = self._call("events.list", lambda: self.client.v1.events.list(params), raw=True)
        return _page_events(page), bool(page.has_more)

    # -- writes (always with the caller's idempotency key) ---------------------------------
    def offer_payment_methods(self, invoice_id: str, methods: list[str], currency: str,
                              idempotency_key: str) -> dict:
        """Set which methods the invoice's own hosted page offers; return the updated invoice.

        POST /v1/invoices/:id with payment_settings[payment_method_types][] (and the bank
        transfer funding options when offered). Paying on that page pays THIS invoice, so the
        normal invoice.paid path recovers the case.
        """
        params = {"payment_settings": payment_settings_params(methods, currency)}
        return self._call("invoices.update", lambda: self.client.v1.invoices.update(
            invoice_id, params, {"idempotency_key": idempotency_key}))

    def pay_invoice(self, invoice_id: str, idempotency_key: str, payment_method_id: str | None = None) -> dict:
        """Attempt payment of an open invoice now (POST /v1/invoices/:id/pay), off-session.

        With `payment_method_id` the given card is charged; without it Stripe picks the invoice's,
        then the subscription's, then the customer's default. Raises CardDeclined on a decline.
        """
        params: dict[str, Any] = _payment_param(payment_method_id) if payment_method_id else {}
        return self._call("invoices.pay", lambda: self.client.v1.invoices.pay(
            invoice_id, params, {"idempotency_key": idempotency_key}))

    # -- error sorting ---------------------------------------------------------------------
    def _call(self, operation: str, fn, *, raw: bool = False) -> Any:
        try:
            result = fn()
            return result if raw else _as_dict(result)
        except stripe.CardError as exc:
            error = _error_body(exc)
            decline = Decline(code=exc.code or error.get("code"),
                              decline_code=error.get("decline_code"),
                              message=error.get("message") or exc.user_message)
            log.info("stripe.card_declined", operation=operation, code=decline.code,
                     decline_code=decline.decline_code)
            raise CardDeclined(decline) from exc
        except (stripe.APIConnectionError, stripe.RateLimitError) as exc:
            log.warning("stripe.unavailable", operation=operation, error=str(exc)[:300])
            raise StripeUnavailable(f"{operation}: {type(exc).__name__}: {str(exc)[:300]}") from exc
        except stripe.StripeError as exc:
            status = exc.http_status
            if status is None or status >= 500 or status in (409, 429):
                log.warning("stripe.unavailable", operation=operation, status=status, error=str(exc)[:300])
                raise StripeUnavailable(f"{operation}: HTTP {status}: {str(exc)[:300]}") from exc
            error = _error_body(exc)
            message = error.get("message") or str(exc)
            log.info("stripe.rejected", operation=operation, status=status, code=error.get("code"),
                     error=message[:300])
            raise StripeRejected(f"{operation}: {message}"[:1000], code=error.get("code"),
                                 status=status) from exc


def gateway(runtime) -> StripeGateway:
    """The process's gateway, built on first use from STRIPE_API_KEY / STRIPE_API_BASE."""
    def build(rt) -> StripeGateway:
        key = rt.settings.stripe_api_key
        if not key:
            raise StripeNotConfigured("STRIPE_API_KEY is not set: cannot call the Stripe API")
        return StripeGateway(key, rt.settings.stripe_api_base)
    return runtime.service("stripe", build)
