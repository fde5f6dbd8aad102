"""A local Stripe API for the tests: the few endpoints the worker calls, strict about every request.

Only what lies outside our walls is faked, at its HTTP boundary: the worker's real StripeClient
talks HTTP to this server (STRIPE_API_BASE). Each request is checked the way Stripe checks it:
  - `Authorization: Bearer <the test key>` (else 401);
  - POST bodies form-encoded, with an `Idempotency-Key` (our own rule: every POST carries one);
  - every parameter name (nested `a[b][0]` form keys) must exist in Stripe's documented parameters
    of that endpoint, and enum values must be documented values. The parameter tree is read from
    stripe-python's params TypedDicts, which are generated from Stripe's OpenAPI spec; an
    undocumented parameter gets Stripe's own 400 `parameter_unknown` error.
Idempotency behaves like Stripe's: the same key with the same request replays the first answer
(`Idempotent-Replayed: true`), with a different request is a 400 `idempotency_error`.

State is plain dicts (invoices, customers, subscriptions, payment methods) the test fills; cards
listed in `declining` are declined at charge time with a 402 card_error.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import typing
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import typing_extensions

from stripe._request_options import RequestOptions
from stripe.params._customer_retrieve_params import CustomerRetrieveParams
from stripe.params._invoice_pay_params import InvoicePayParams
from stripe.params._invoice_retrieve_params import InvoiceRetrieveParams
from stripe.params._invoice_update_params import InvoiceUpdateParams
from stripe.params._payment_intent_retrieve_params import PaymentIntentRetrieveParams
from stripe.params._payment_method_retrieve_params import PaymentMethodRetrieveParams
from stripe.params._subscription_retrieve_params import SubscriptionRetrieveParams
from stripe.params._webhook_endpoint_create_params import WebhookEndpointCreateParams

from tests.support.http_fake import FakeHandler, FakeHTTPServer

API_KEY = "sk_test_fake_stripe_key_for_the_suite"
_REQUEST_OPTION_KEYS = frozenset(RequestOptions.__annotations__)
_KEY_RE = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")


# -- Stripe's documented parameters, from stripe-python's generated TypedDicts -------------------
class ParamError(Exception):
    def __init__(self, code: str, param: str, message: str):
        super().__init__(message)
        self.code, self.param, self.message = code, param, message


def _fields(cls) -> dict[str, Any]:
    module_globals = vars(sys.modules[cls.__module__])
    out = {}
    for name, annotation in cls.__annotations__.items():
        if name in _REQUEST_OPTION_KEYS:
            continue  # client-side options (api_key, idempotency_key...), never sent as parameters
        if isinstance(annotation, str):
            annotation = typing.ForwardRef(annotation)
        out[name] = typing._eval_type(annotation, module_globals, None)  # noqa: SLF001
    return out


def _unwrap(tp):
    while typing.get_origin(tp) in (typing.NotRequired, typing.Required,
                                   typing_extensions.NotRequired, typing_extensions.Required):
        tp = typing.get_args(tp)[0]
    return tp


def _check(tp, segments: list[str], value: str, name: str) -> None:
    tp = _unwrap(tp)
    origin = typing.get_origin(tp)
    if tp is Any:
        return
    if origin is typing.Union:
        arms = typing.get_args(tp)
        literals = {v for arm in arms if typing.get_origin(arm) is typing.Literal for v in typing.get_args(arm)}
        errors = []
        for arm in arms:
            if typing.get_origin(arm) is typing.Literal:
                continue
            if _unwrap(arm) is str and not segments and literals - {""}:
                continue  # an enum: the documented values only (checked below)
            try:
                return _check(arm, segments, value, name)
            except ParamError as exc:
                errors.append(exc)
        if not segments and value in literals:
            return
        if not segments and literals - {""}:
            raise ParamError("parameter_invalid_string", name,
                             f"Invalid {name}: must be one of {', '.join(sorted(v for v in literals if v))}")
        unknown = [e for e in errors if e.code == "parameter_unknown"]
        raise (unknown or errors or [ParamError("parameter_invalid", name, f"Invalid {name}")])[0]
    if origin is typing.Literal:
        if segments or value not in typing.get_args(tp):
            raise ParamError("parameter_invalid_string", name, f"Invalid {name}: must be one of "
                             f"{', '.join(map(str, typing.get_args(tp)))}")
        return
    if typing_extensions.is_typeddict(tp):
        if not segments:
            raise ParamError("parameter_invalid_string", name, f"Invalid object: {name} must be a hash")
        fields = _fields(tp)
        key = segments[0]
        child = f"{name}[{key}]"
        if key not in fields:
            raise ParamError("parameter_unknown", child, f"Received unknown parameter: {child}")
        return _check(fields[key], segments[1:], value, child)
    if origin in (list, typing.List):
        if not segments or not segments[0].isdigit():
            if not segments and value == "":
                return
            raise ParamError("parameter_invalid_array", name, f"Invalid array: {name}")
        return _check(typing.get_args(tp)[0], segments[1:], value, f"{name}[{segments[0]}]")
    if origin in (dict, typing.Dict):
        if len(segments) != 1:
            raise ParamError("parameter_invalid_string", name, f"Invalid hash: {name}")
        return
    if isinstance(tp, type) and tp.__name__ == "UntypedStripeObject":
        return
    if segments:
        raise ParamError("parameter_unknown", f"{name}[{segments[0]}]",
                         f"Received unknown parameter: {name}[{segments[0]}]")
    if tp is int and not re.fullmatch(r"-?\d+", value):
        raise ParamError("parameter_invalid_integer", name, f"Invalid integer: {value}")
    if tp is bool and value not in ("true", "false"):
        raise ParamError("parameter_invalid_boolean", name, f"Invalid boolean: {value}")


def check_params(params_class, pairs: list[tuple[str, str]]) -> None:
    """Raise ParamError unless every form key/value is a documented parameter of the endpoint."""
    fields = _fields(params_class)
    for key, value in pairs:
        match = _KEY_RE.match(key)
        if not match:
            raise ParamError("parameter_invalid", key, f"Invalid parameter name: {key}")
        top = match.group(1)
        segments = re.findall(r"\[([^\[\]]*)\]", match.group(2))
        if top not in fields:
            raise ParamError("parameter_unknown", key, f"Received unknown parameter: {top}")
        _check(fields[top], segments, value, top)


def unflatten(pairs: list[tuple[str, str]]) -> dict:
    """`a[b][0]=x` form pairs -> {"a": {"b": ["x"]}} (lists from numeric keys)."""
    root: dict = {}
    for key, value in pairs:
        match = _KEY_RE.match(key)
        parts = [match.group(1), *re.findall(r"\[([^\[\]]*)\]", match.group(2))]
        node = root
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value

    def lists(node):
        if isinstance(node, dict):
            if node and all(k.isdigit() for k in node):
                return [lists(node[k]) for k in sorted(node, key=int)]
            return {k: lists(v) for k, v in node.items()}
        return node
    return lists(root)


# -- the server ---------------------------------------------------------------------------
@dataclass
class Recorded:
    method: str
    path: str
    pairs: list[tuple[str, str]]
    idempotency_key: str | None
    status: int
    replayed: bool = False

    @property
    def params(self) -> dict:
        return unflatten(self.pairs)


@dataclass
class FakeStripe:
    """State + request log of the fake; `base_url` goes into STRIPE_API_BASE."""

    api_key: str = API_KEY
    invoices: dict[str, dict] = field(default_factory=dict)
    customers: dict[str, dict] = field(default_factory=dict)
    subscriptions: dict[str, dict] = field(default_factory=dict)
    payment_methods: dict[str, dict] = field(default_factory=dict)
    payment_intents: dict[str, dict] = field(default_factory=dict)
    declining: set[str] = field(default_factory=set)  # payment method ids declined at charge time
    requests: list[Recorded] = field(default_factory=list)
    applied: list[tuple[str, str]] = field(default_factory=list)  # (operation, object id) really done
    sever_next: list[str] = field(default_factory=list)  # operations answered by a dropped connection
    stripe_versions: list[str | None] = field(default_factory=list)  # the Stripe-Version header of each request
    webhook_endpoints: dict[str, dict] = field(default_factory=dict)
    unavailable: bool = False  # an outage: every request is answered 503 (Stripe's api_error)
    base_url: str = ""
    _idempotency: dict[str, tuple[str, int, dict]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # fixtures ------------------------------------------------------------------------------
    def add_invoice(self, invoice_id: str, customer: str, amount_due: int, currency: str = "usd",
                    status: str = "open", subscription: str | None = None) -> dict:
        invoice = {
            "id": invoice_id, "object": "invoice", "customer": customer, "status": status,
            "currency": currency, "amount_due": amount_due, "amount_paid": 0, "amount_remaining": amount_due,
            "attempt_count": 1, "default_payment_method": None, "default_source": None,
            "hosted_invoice_url": f"https://invoice.stripe.com/i/acct_test/test_{invoice_id}",
            "parent": ({"type": "subscription_details", "subscription_details": {"subscription": subscription}}
                       if subscription else None),
            "payment_settings": {"payment_method_types": None, "payment_method_options": None},
            "livemode": False,
        }
        self.invoices[invoice_id] = invoice
        return invoice

    def add_customer(self, customer_id: str, default_payment_method: str | None = None,
                     email: str = "owner@example.com") -> dict:
        customer = {"id": customer_id, "object": "customer", "email": email, "default_source": None,
                    "invoice_settings": {"default_payment_method": default_payment_method}}
        self.customers[customer_id] = customer
        return customer

    def add_subscription(self, subscription_id: str, customer: str, default_payment_method: str | None = None):
        sub = {"id": subscription_id, "object": "subscription", "customer": customer, "status": "past_due",
               "default_payment_method": default_payment_method, "default_source": None}
        self.subscriptions[subscription_id] = sub
        return sub

    def add_card(self, pm_id: str, customer: str, brand: str = "visa", last4: str = "4242",
                 exp_month: int = 12, exp_year: int = 2030, declines: bool = False) -> dict:
        pm = {"id": pm_id, "object": "payment_method", "type": "card", "customer": customer,
              "card": {"brand": brand, "last4": last4, "exp_month": exp_month, "exp_year": exp_year,
                       "funding": "credit", "fingerprint": f"fp_{pm_id}", "country": "US"}}
        self.payment_methods[pm_id] = pm
        if declines:
            self.declining.add(pm_id)
        return pm

    def posts(self, path_suffix: str = "") -> list[Recorded]:
        return [r for r in self.requests if r.method == "POST" and r.path.endswith(path_suffix)]

    # request handling ----------------------------------------------------------------------
    def handle(self, method: str, path: str, headers, body: bytes) -> tuple[int, dict, dict, bool]:
        """(status, json body, extra headers, sever) for one request."""
        query = urlsplit(path).query
        path = urlsplit(path).path
        self.stripe_versions.append(headers.get("Stripe-Version"))
        if self.unavailable:
            self.requests.append(Recorded(method, path, [], headers.get("Idempotency-Key"), 503))
            return 503, _error("api_error", None, None, "Stripe is temporarily unavailable"), {}, False
        auth = headers.get("Authorization") or ""
        if auth != f"Bearer {self.api_key}":
            return 401, _error("invalid_request_error", None, None,
                               "Invalid API Key provided: check the Authorization header"), {}, False
        if method == "POST":
            content_type = (headers.get("Content-Type") or "").split(";")[0].strip()
            if content_type != "application/x-www-form-urlencoded":
                return 400, _error("invalid_request_error", None, None,
                                   f"Invalid request: Content-Type must be application/x-www-form-urlencoded,"
                                   f" got {content_type!r}"), {}, False
            pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True)
            key = headers.get("Idempotency-Key")
            if not key:
                return 400, _error("invalid_request_error", "idempotency_key_missing", None,
                                   "This test server requires an Idempotency-Key on every POST"), {}, False
        else:
            pairs = parse_qsl(query, keep_blank_values=True)
            key = None
        route = self._route(method, path)
        if route is None:
            return 404, _error("invalid_request_error", None, None,
                               f"Unrecognized request URL ({method}: {path})."), {}, False
        operation, params_class, fn, object_id = route
        with self._lock:
            fingerprint = f"{method} {path} {sorted(pairs)}"
            if key and key in self._idempotency:
                first, status, answer = self._idempotency[key]
                if first != fingerprint:
                    status, answer = 400, _error(
                        "idempotency_error", None, None,
                        f"Keys for idempotent requests can only be used with the same parameters they "
                        f"were first used with. Try using a key other than '{key}' if you meant to "
                        f"execute a different request.")
                    self.requests.append(Recorded(method, path, pairs, key, status))
                    return status, answer, {}, False
                self.requests.append(Recorded(method, path, pairs, key, status, replayed=True))
                return status, answer, {"Idempotent-Replayed": "true"}, False
            try:
                check_params(params_class, pairs)
            except ParamError as exc:  # failed validation: Stripe saves no idempotent result
                status, answer = 400, _error("invalid_request_error", exc.code, exc.param, exc.message)
                self.requests.append(Recorded(method, path, pairs, key, status))
                return status, answer, {}, False
            status, answer = fn(object_id, unflatten(pairs))
            if key:  # the endpoint ran: its result (success, 402, 400...) is what the key replays
                self._idempotency[key] = (fingerprint, status, answer)
            self.requests.append(Recorded(method, path, pairs, key, status))
            sever = operation in self.sever_next
            if sever:
                self.sever_next.remove(operation)
            return status, answer, {}, sever

    def _route(self, method: str, path: str):
        parts = path.strip("/").split("/")
        if parts == ["v1", "webhook_endpoints"] and method == "POST":
            return "webhook_endpoints.create", WebhookEndpointCreateParams, self._create_webhook_endpoint, None
        if len(parts) < 3 or parts[0] != "v1":
            return None
        resource, object_id, rest = parts[1], parts[2], parts[3:]
        table = {
            ("GET", "invoices", ()): ("invoices.retrieve", InvoiceRetrieveParams, self._get(self.invoices, "invoice")),
            ("POST", "invoices", ()): ("invoices.update", InvoiceUpdateParams, self._update_invoice),
            ("POST", "invoices", ("pay",)): ("invoices.pay", InvoicePayParams, self._pay_invoice),
            ("GET", "customers", ()): ("customers.retrieve", CustomerRetrieveParams,
                                       self._get(self.customers, "customer")),
            ("GET", "subscriptions", ()): ("subscriptions.retrieve", SubscriptionRetrieveParams,
                                           self._get(self.subscriptions, "subscription")),
            ("GET", "payment_methods", ()): ("payment_methods.retrieve", PaymentMethodRetrieveParams,
                                             self._get(self.payment_methods, "payment_method")),
            ("GET", "payment_intents", ()): ("payment_intents.retrieve", PaymentIntentRetrieveParams,
                                             self._get(self.payment_intents, "payment_intent")),
        }
        found = table.get((method, resource, tuple(rest)))
        return (*found, object_id) if found else None

    def _create_webhook_endpoint(self, _object_id, params: dict):
        endpoint_id = f"we_{uuid.uuid4().hex[:24]}"
        endpoint = {"id": endpoint_id, "object": "webhook_endpoint", "url": params["url"],
                    "enabled_events": params["enabled_events"], "api_version": params.get("api_version"),
                    "description": params.get("description"), "status": "enabled",
                    "secret": f"whsec_{uuid.uuid4().hex}{uuid.uuid4().hex}"}
        self.webhook_endpoints[endpoint_id] = endpoint
        return 200, endpoint

    def _get(self, store: dict, kind: str):
        def get(object_id: str, _params: dict):
            if object_id not in store:
                return 404, _missing(kind, object_id)
            return 200, json.loads(json.dumps(store[object_id]))
        return get

    def _update_invoice(self, invoice_id: str, params: dict):
        invoice = self.invoices.get(invoice_id)
        if invoice is None:
            return 404, _missing("invoice", invoice_id)
        if invoice["status"] not in ("draft", "open"):
            return 400, _error("invalid_request_error", "invoice_not_editable", None,
                               f"This invoice is {invoice['status']} and can no longer be updated.")
        settings = params.get("payment_settings") or {}
        if "payment_method_types" in settings:
            types = settings["payment_method_types"]
            invoice["payment_settings"]["payment_method_types"] = types or None
            options = settings.get("payment_method_options") or {}
            if "customer_balance" in (types or []) and \
                    (options.get("customer_balance") or {}).get("funding_type") != "bank_transfer":
                return 400, _error("invalid_request_error", "parameter_missing",
                                   "payment_settings[payment_method_options][customer_balance][funding_type]",
                                   "customer_balance needs funding_type=bank_transfer to be offered on an invoice")
            invoice["payment_settings"]["payment_method_options"] = options or None
        self.applied.append(("invoices.update", invoice_id))
        return 200, json.loads(json.dumps(invoice))

    def _pay_invoice(self, invoice_id: str, params: dict):
        invoice = self.invoices.get(invoice_id)
        if invoice is None:
            return 404, _missing("invoice", invoice_id)
        if invoice["status"] == "paid":
            return 400, _error("invalid_request_error", "invoice_already_paid", None, "Invoice is already paid")
        if invoice["status"] != "open":
            return 400, _error("invalid_request_error", "invoice_not_open", None,
                               f"This invoice is {invoice['status']}: it cannot be paid")
        pm_id = params.get("payment_method") or params.get("source") or self._stripe_choice(invoice)
        self.applied.append(("invoices.pay", f"{invoice_id}:{pm_id}"))
        invoice["attempt_count"] += 1
        pi_id = f"pi_{uuid.uuid4().hex[:14]}"
        if pm_id in self.declining or pm_id is None:
            error = {"type": "card_error", "code": "card_declined", "decline_code": "insufficient_funds",
                     "message": "Your card has insufficient funds.", "param": "",
                     "payment_method": {"id": pm_id}}
            self.payment_intents[pi_id] = {"id": pi_id, "object": "payment_intent",
                                           "status": "requires_payment_method", "last_payment_error": error}
            return 402, {"error": {**error, "request_log_url": "https://dashboard.stripe.com/test/logs"}}
        self.payment_intents[pi_id] = {"id": pi_id, "object": "payment_intent", "status": "succeeded",
                                       "last_payment_error": None}
        invoice.update(status="paid", amount_paid=invoice["amount_due"], amount_remaining=0)
        return 200, json.loads(json.dumps(invoice))

    def _stripe_choice(self, invoice: dict) -> str | None:
        """Stripe's own pick for /pay without a payment method: invoice, subscription, customer default."""
        if invoice.get("default_payment_method"):
            return invoice["default_payment_method"]
        sub_id = ((invoice.get("parent") or {}).get("subscription_details") or {}).get("subscription")
        sub = self.subscriptions.get(sub_id or "")
        if sub and (sub.get("default_payment_method") or sub.get("default_source")):
            return sub.get("default_payment_method") or sub.get("default_source")
        customer = self.customers.get(invoice["customer"]) or {}
        return (customer.get("invoice_settings") or {}).get("default_payment_method") or customer.get("default_source")


def _error(kind: str, code: str | None, param: str | None, message: str) -> dict:
    error = {"type": kind, "message": message}
    if code:
        error["code"] = code
    if param:
        error["param"] = param
    return {"error": error}


def _missing(kind: str, object_id: str) -> dict:
    return _error("invalid_request_error", "resource_missing", "id", f"No such {kind}: '{object_id}'")


class _Handler(FakeHandler):
    fake: "FakeStripeServer"

    def _serve(self, method: str) -> None:
        body = self.read_body()
        status, answer, extra_headers, sever = self.fake.stripe.handle(method, self.path, self.headers, body)
        if sever:  # the work is done but the answer is lost: the client must retry with the same key
            self.close_connection = True
            return
        headers = {"Content-Type": "application/json", "Request-Id": f"req_{uuid.uuid4().hex[:14]}", **extra_headers}
        self.answer(status, json.dumps(answer).encode(), headers)

    def do_GET(self):  # noqa: N802
        self._serve("GET")

    def do_POST(self):  # noqa: N802
        self._serve("POST")

    def do_DELETE(self):  # noqa: N802
        self._serve("DELETE")


class FakeStripeServer(FakeHTTPServer):
    """Serve a FakeStripe on 127.0.0.1 (a free port) in a thread: `with FakeStripeServer() as fake:`
    gives the FakeStripe (its state and request log), its base_url set."""

    handler = _Handler

    def __init__(self, fake: FakeStripe | None = None):
        super().__init__()
        self.stripe = fake or FakeStripe()
        self.stripe.base_url = self.url

    def __enter__(self) -> FakeStripe:
        self.start()
        return self.stripe
