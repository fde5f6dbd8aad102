"""The OpenAPI document (worker/web/openapi.json) against the code: routes, notice types, and the running app.

A route added to the Falcon app (read from its router) or a notice type added to
worker.delivery.outbox.NOTICE_TYPES that the document does not describe fails here; schemathesis then
checks the app's answers against the document (status codes, response schemas, auth enforced).
"""

from __future__ import annotations

import json

import falcon.testing
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (ignored_auth, response_schema_conformance,
                                               status_code_conformance)

from tests.support.delivery import seed_case
from tests.support.helpers import ADMIN_TOKEN
from worker.web import openapi
from worker.delivery.outbox import NOTICE_TYPES
from worker.web.app import create_app

PLATFORM_TOKEN = "platform-api-token-for-the-openapi-tests"
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance, ignored_auth]
MAX_EXAMPLES = 30  # per operation: bounded, a few seconds in all in process
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def document() -> dict:
    return json.loads(openapi.PATH.read_text())


def seed_contract_data(runtime) -> None:
    """The account the document's examples name, with one notice: 200 answers get checked too."""  # "sub_test_1", the account id the document's examples name
    from tests.support.delivery import in_handler
    seed_case(runtime)
    in_handler(runtime, lambda ctx: ctx.effects.notice(
         ctx, "service.disruption_scheduled", "sub_test_1", "notice:sub_test_1:openapi", case_id="dc_test_1",
         invoice_id="in_test_1", customer_id="cus_test_1", subscription_id="sub_test_1", disrupt_at=None))


@pytest.fixture
def contract_runtime(make_runtime):
    runtime = make_runtime(PLATFORM_API_TOKEN=PLATFORM_TOKEN)
    seed_contract_data(runtime)
    return runtime


# -- the document against the code --------------------------------------------------------------
def test_the_document_is_valid_openapi_3_1():
    doc = document()
    validate(doc)
    assert doc["openapi"].startswith("3.1")


def test_every_route_of_the_app_but_the_html_pages_is_in_the_document(runtime):
    routes = openapi.router_routes(create_app(runtime))
    paths = document()["paths"]
    assert routes, "the router walk found no route"
    missing = []
    for template, methods in sorted(routes.items()):
        if template.startswith(openapi.HTML_PREFIXES):
            continue
        described = {m for m in paths.get(template, {}) if m in HTTP_METHODS}
        missing += [f"{m} {template}" for m in sorted(methods) if m.lower() not in described]
    assert missing == [], f"routes the OpenAPI document does not describe: {missing}"
    # and nothing described that the app does not route (a stale document)
    routed = {t for t in routes if not t.startswith(openapi.HTML_PREFIXES)}
    assert set(paths) <= routed, f"described but not routed: {sorted(set(paths) - routed)}"


def test_the_router_walk_sees_a_newly_added_route(runtime):
    """The check above is only as good as the walk: a route added later must show up in it."""
    app = create_app(runtime)

    class Probe:
        def on_delete(self, req, resp, thing_id):
            pass

    app.add_route("/probe/{thing_id}", Probe())
    assert openapi.router_routes(app)["/probe/{thing_id}"] == {"DELETE"}
    assert openapi.router_routes(app)["/payment-links"] == {"POST"}


def test_the_webhooks_section_names_every_notice_type_with_its_body_schema():
    doc = document()
    assert set(doc["webhooks"]) == set(NOTICE_TYPES)
    assert set(doc["components"]["schemas"]["NoticeType"]["enum"]) == set(NOTICE_TYPES)
    for notice_type, item in doc["webhooks"].items():
        schema = item["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert {"$ref": "#/components/schemas/Notice"} in schema["allOf"]
        assert schema["allOf"][1]["properties"]["type"]["const"] == notice_type
        headers = {p["name"] for p in item["post"]["parameters"] if p["in"] == "header"}
        assert {"webhook-id", "webhook-timestamp", "webhook-signature", "Dunning-Signature"} <= headers


def test_the_notice_schema_matches_a_real_notice_body(contract_runtime):
    from jsonschema import Draft202012Validator
    from tests.support.helpers import rows
    doc = document()
    schema = {"$ref": "#/components/schemas/Notice", "components": doc["components"]}
    [row] = rows(contract_runtime, "platform_notices")
    Draft202012Validator(schema).validate(json.loads(row["body"]))


def test_the_served_document_is_the_one_in_the_repository_and_lists_the_key_routes(runtime):
    answer = falcon.testing.TestClient(create_app(runtime)).simulate_get("/openapi.json")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("application/json")
    assert answer.content == openapi.PATH.read_bytes()
    paths = answer.json["paths"]
    for path in ("/webhooks/stripe", "/payment-links", "/platform/accounts",
                 "/platform/accounts/{account_id}", "/platform/accounts/{account_id}/notices"):
        assert path in paths, path
    assert paths["/platform/accounts/{account_id}"]["get"]["security"] == [{"platformToken": []}]
    assert paths["/payment-links"]["post"]["security"] == [{"adminToken": []}]


# -- schemathesis against the app ----------------------------------------------------------------
def auth_for(case) -> dict[str, str]:
    """The credentials a legitimate client of each operation holds."""
    security = case.operation.definition.raw.get("security") or []
    names = {name for requirement in security for name in requirement}
    if "platformToken" in names:
        return {"Authorization": f"Bearer {PLATFORM_TOKEN}"}
    if "adminToken" in names:
        return {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    return {}


def run_schemathesis(schema, max_examples: int = MAX_EXAMPLES) -> dict[str, int]:
    """Every operation: its explicit examples, then positive and negative generated cases, each
    sent with the credentials its client holds and validated with CHECKS. Raises on the first
    failure (schemathesis' own error names the check); returns the cases run per operation."""
    from hypothesis import given
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    ran: dict[str, int] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        strategies = [(False, s) for s in schema.get_strategies_from_examples(operation)]
        strategies += [(False, operation.as_strategy(GenerationMode.POSITIVE)),
                       (True, operation.as_strategy(GenerationMode.NEGATIVE))]
        for negative, strategy in strategies:
            @given(case=strategy)
            @settings(max_examples=max_examples, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            def check(case):
                ran[operation.label] = ran.get(operation.label, 0) + 1
                case.call_and_validate(headers=auth_for(case), checks=CHECKS)

            try:
                check()
            except Unsatisfiable:
                if not negative:
                    raise  # an operation without inputs has no invalid input to make: nothing to do
    return ran


def test_schemathesis_finds_no_failure_in_process(contract_runtime):
    schema = schemathesis.openapi.from_wsgi("/openapi.json", create_app(contract_runtime))
    ran = run_schemathesis(schema)
    described = {f"{method.upper()} {path}" for path, item in document()["paths"].items()
                 for method in item if method in HTTP_METHODS}
    # schemathesis does not test the operation that serves the document it was loaded from
    assert set(ran) == described - {"GET /openapi.json"}
    with_inputs = [f"{method.upper()} {path}" for path, item in document()["paths"].items()
                   for method, op in item.items() if method in HTTP_METHODS
                   and (op.get("parameters") or item.get("parameters") or op.get("requestBody"))]
    assert len(with_inputs) >= 6 and all(ran[label] >= 10 for label in with_inputs), ran


def test_schemathesis_catches_a_platform_route_that_ignores_its_token(contract_runtime, monkeypatch):
    """The run above can fail: with the token check switched off, ignored_auth reports it."""
    from worker.web import platform as web_platform
    monkeypatch.setattr(web_platform, "is_platform", lambda authorization, settings: True)
    schema = schemathesis.openapi.from_wsgi("/openapi.json", create_app(contract_runtime))
    from schemathesis.openapi.checks import IgnoredAuth
    with pytest.raises(BaseException) as raised:  # schemathesis raises an exception group
        run_schemathesis(schema, max_examples=5)
    found = getattr(raised.value, "exceptions", (raised.value,))
    assert any(isinstance(e, IgnoredAuth) for e in found), raised.value


@pytest.mark.slow
def test_schemathesis_finds_no_failure_against_the_real_web_process(tmp_path, make_runtime):
    """The same run over HTTP against `dunning web` (gunicorn) on PostgreSQL and Redis."""
    from tests.support.processes import build_service
    svc = build_service(tmp_path, db="postgres", broker="redis", PLATFORM_API_TOKEN=PLATFORM_TOKEN)
    try:
        seed_contract_data(make_runtime(DATABASE_URL=svc.database_url, PLATFORM_API_TOKEN=PLATFORM_TOKEN))
        svc.start_web(workers=1, threads=4)
        schema = schemathesis.openapi.from_url(f"{svc.base_url}/openapi.json")
        ran = run_schemathesis(schema)
        assert len(ran) == len(document()["paths"]) - 1, ran
    finally:
        svc.close()
