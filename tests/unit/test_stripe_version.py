"""The Stripe API version is pinned in one place; events of any version in the shared corpus are read
by the same adapters; `dunning stripe webhook-endpoint create` sets up exactly the handled types."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from tests.support.helpers import STRIPE_DATA
from tests.support.fake_stripe import API_KEY
from tests.support.helpers import drain, post_event, rows
from worker.stripe.gateway import STRIPE_API_VERSION, StripeGateway


def test_every_call_to_stripe_names_the_pinned_api_version_not_the_library_default(fake_stripe):  # noqa: F811
    fake_stripe.add_invoice("in_version_1", customer="cus_v", amount_due=100)
    StripeGateway(API_KEY, fake_stripe.base_url).retrieve_invoice("in_version_1")
    assert fake_stripe.stripe_versions == [STRIPE_API_VERSION]


def test_the_pinned_version_is_the_one_the_readme_names():
    from config.settings import PROJECT_ROOT
    assert f"`{STRIPE_API_VERSION}`" in (PROJECT_ROOT / "README.md").read_text()


def _corpus_versions() -> dict[str, list[str]]:
    """api_version -> the full event files of that version in ../shared/stripe-data."""
    index_file = STRIPE_DATA / "INDEX.json"
    if not index_file.is_file():
        return {}
    versions: dict[str, list[str]] = {}
    for entry in json.loads(index_file.read_text()):
        if entry["kind"] == "event" and entry.get("api_version"):
            versions.setdefault(entry["api_version"], []).append(entry["file"])
    return versions


@pytest.mark.parametrize("api_version", sorted(_corpus_versions()) or ["(no corpus)"])
def test_events_of_each_api_version_in_the_corpus_are_read_by_the_same_adapters(runtime, client, stripe_data,
                                                                                 api_version):
    files = _corpus_versions()[api_version]
    events = {}
    for name in files:
        event = json.loads((stripe_data / name).read_text())
        assert event["api_version"] == api_version
        events.setdefault(event["id"], event)
    for event in events.values():
        assert post_event(client, json.dumps(event)).status_code == 200
    drain(runtime)
    stored = {r["id"]: r for r in rows(runtime, "events")}
    assert set(stored) == set(events)
    assert {r["api_version"] for r in stored.values()} == {api_version}
    failed = {i: r["last_error"] for i, r in stored.items() if r["status"] not in ("processed", "ignored")}
    assert failed == {}, f"{api_version}: {failed}"


def test_webhook_endpoint_create_subscribes_exactly_the_handled_types_and_prints_the_secret(
        sqlite_stripe_runtime, fake_stripe, monkeypatch):  # noqa: F811
    from handlers.registry import known_types
    from worker.cli import main
    s = sqlite_stripe_runtime.settings
    env = {"DATABASE_URL": s.database_url, "STRIPE_API_KEY": API_KEY, "STRIPE_API_BASE": fake_stripe.base_url,
           "DUNNING_VAR_DIR": str(s.var_dir), "DUNNING_POLICY": str(s.dunning_policy), "LOG_FORMAT": "json",
           "STRIPE_WEBHOOK_SECRET": "", "ADMIN_TOKEN": ""}  # set-up needs neither
    result = CliRunner().invoke(main, ["stripe", "webhook-endpoint", "create", "--url",
                                       "https://billing.example.com/webhooks/stripe", "--json"], env=env)
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    [endpoint] = fake_stripe.webhook_endpoints.values()
    assert sorted(endpoint["enabled_events"]) == sorted(known_types())
    assert endpoint["api_version"] == STRIPE_API_VERSION
    assert endpoint["url"] == "https://billing.example.com/webhooks/stripe"
    assert printed["secret"] == endpoint["secret"] and printed["secret"].startswith("whsec_")
    human = CliRunner().invoke(main, ["stripe", "webhook-endpoint", "create", "--url",
                                      "https://billing.example.com/webhooks/stripe"], env=env)
    assert human.exit_code == 0 and "STRIPE_WEBHOOK_SECRET=whsec_" in human.output


def test_webhook_endpoint_create_without_an_api_key_says_so(tmp_path):
    from worker.cli import main
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'x.sqlite3'}", "DUNNING_VAR_DIR": str(tmp_path),
           "STRIPE_API_KEY": "", "STRIPE_WEBHOOK_SECRET": "", "ADMIN_TOKEN": ""}
    result = CliRunner().invoke(main, ["stripe", "webhook-endpoint", "create", "--url", "https://x.example/h"],
                                env=env)
    assert result.exit_code == 1 and "STRIPE_API_KEY" in result.output
