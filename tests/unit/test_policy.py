"""The policy file: the shipped default, schedules per price/product, recipients, exclusions, mistakes."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from config.settings import PROJECT_ROOT
from handlers.policy import PolicyError, load_policy, parse_policy

DEFAULT = PROJECT_ROOT / "config" / "policy.toml"


def steps(*items):
    return [dict(zip(("day", "email", "action"), item)) if len(item) == 3 else {"day": item[0], "email": item[1]}
            for item in items]


def policy_with(**schedules) -> dict:
    return {"schedules": {"default": {"disrupt_after_days": 14, "steps": steps((0, "payment-failed"))},
                          **schedules}}


def test_the_shipped_default_is_day_0_3_7_12_14_with_disruption_on_day_14():
    policy = load_policy(DEFAULT)
    schedule = policy.schedule_for([], [])
    assert schedule.name == "default" and schedule.disrupt_after_days == 14
    assert [(s.day, s.email, s.action) for s in schedule.steps] == [
        (0, "payment-failed", None), (3, "reminder", None), (7, "disruption-warning", "schedule_disruption"),
        (12, "final-notice", None), (14, "service-disrupted", "disrupt")]
    assert policy.payment_links.bank_minimums == {"usd": 100000}
    assert policy.payment_links.daily_limit_per_invoice == 5 and policy.payment_links.expires_after_hours == 72


def test_every_shipped_step_names_an_existing_template():
    from worker.delivery.emails import TEMPLATES
    for schedule in load_policy(DEFAULT).schedules.values():
        assert {s.email for s in schedule.steps} <= set(TEMPLATES)


def test_a_price_schedule_wins_over_a_product_schedule_which_wins_over_the_default():
    raw = policy_with(
        by_price={"prices": ["price_a"], "disrupt_after_days": 20, "steps": steps((0, "payment-failed"))},
        by_product={"products": ["prod_b"], "disrupt_after_days": 20, "steps": steps((0, "payment-failed"))},
    )
    policy = parse_policy(raw)
    assert policy.schedule_for(["price_a"], ["prod_b"]).name == "by_price"
    assert policy.schedule_for(["price_x"], ["prod_b"]).name == "by_product"
    assert policy.schedule_for(["price_x"], ["prod_x"]).name == "default"
    assert policy.schedule_named("vanished").name == "default"


@pytest.mark.parametrize("source, customer, expected", [
    ("customer.email", {"email": "owner@example.com"}, "owner@example.com"),
    ("customer.email", {"email": " owner@example.com "}, "owner@example.com"),
    ("customer.email", {"email": "owner@example.com\r\nBcc: thief@example.com"}, None),
    ("customer.email", {"email": "a@b.com, thief@example.com"}, None),
    ("customer.email", {"email": "Owner <owner@example.com>"}, None),
    ("customer.email", {"email": None}, None),
    ("customer.email", {"email": "owner@example.com", "deleted": True}, None),
    ("customer.metadata.owner_email", {"email": "other@example.com",
                                       "metadata": {"owner_email": "owner@example.com"}}, "owner@example.com"),
    ("customer.metadata.owner_email", {"email": "other@example.com",
                                       "metadata": '{"owner_email": "owner@example.com"}'}, "owner@example.com"),
    ("customer.metadata.owner_email", {"email": "other@example.com", "metadata": {}}, None),
])
def test_the_recipient_is_the_owner_of_record_named_by_the_policy_or_nobody(source, customer, expected):
    policy = parse_policy({**policy_with(), "recipient": {"source": source}})
    assert policy.recipient_for(customer) == expected


def test_customers_are_excluded_by_any_matching_metadata_pair():
    policy = parse_policy({**policy_with(), "exclude": {"customer_metadata": {"dunning": "off", "tier": "internal"}}})
    assert policy.is_excluded({"dunning": "off"}) and policy.is_excluded({"tier": "internal", "x": "y"})
    assert not policy.is_excluded({"dunning": "on"}) and not policy.is_excluded({}) and not policy.is_excluded(None)


@pytest.mark.parametrize("schedules, message", [
    ({}, "schedules.default"),
    ({"default": {"steps": []}}, "no steps"),
    ({"default": {"steps": steps((1, "payment-failed"))}}, "start at day 0"),
    ({"default": {"steps": steps((0, "payment-failed"), (5, "reminder"), (3, "reminder"))}}, "increasing"),
    ({"default": {"steps": steps((0, "payment-failed", "explode"))}}, "unknown action"),
    ({"default": {"steps": steps((0, "payment-failed"), (14, "service-disrupted", "disrupt"))}},
     "earlier schedule_disruption"),
    ({"default": {"disrupt_after_days": 10, "steps": steps(
        (0, "payment-failed"), (7, "disruption-warning", "schedule_disruption"),
        (14, "service-disrupted", "disrupt"))}}, "disrupt_after_days"),
    ({"default": {"steps": steps((0, "payment-failed"), (7, "disruption-warning", "schedule_disruption"))}},
     "later disrupt"),
    ({"default": {"steps": [{"day": 0}]}}, "integer day and an email"),
    ({"default": {"steps": steps((0, "../etc/passwd"))}}, "template folder"),
])
def test_a_mistaken_policy_is_refused_with_a_message_naming_the_problem(schedules, message):
    with pytest.raises(PolicyError, match=message):
        parse_policy({"schedules": schedules})


def test_a_bad_recipient_source_or_a_missing_file_is_refused(tmp_path):
    with pytest.raises(PolicyError, match="recipient"):
        parse_policy({**policy_with(), "recipient": {"source": "invoice.customer_email"}})
    with pytest.raises(PolicyError, match="does not exist"):
        load_policy(tmp_path / "nope.toml")
    (tmp_path / "broken.toml").write_text("[schedules\n")
    with pytest.raises(PolicyError, match="broken.toml"):
        load_policy(tmp_path / "broken.toml")


def test_policy_show_prints_the_transition_table_and_the_schedule_day_by_day(monkeypatch):
    from worker.cli import main
    monkeypatch.setenv("DUNNING_POLICY", str(DEFAULT))
    text = CliRunner().invoke(main, ["policy", "show"])
    assert text.exit_code == 0, text.output
    assert "failing               invoice_paid            recovered" in text.output
    assert "7    disruption-warning  disruption_scheduled  service.disruption_scheduled (disrupt_at = day 14)" \
        in text.output
    doc = json.loads(CliRunner().invoke(main, ["policy", "show", "--json"]).output)
    assert [(s["day"], s["email"], s["state_change"]) for s in doc["schedules"]["default"]["steps"]] == [
        (0, "payment-failed", None), (3, "reminder", None), (7, "disruption-warning", "disruption_scheduled"),
        (12, "final-notice", None), (14, "service-disrupted", "disrupted")]
    assert {"from": "disrupted", "trigger": "invoice_paid", "to": "recovered"} in doc["transitions"]


# -- the email of each step is a template (issue 11) ---------------------------------------------
TYPO_POLICY = ('[schedules.default]\ndisrupt_after_days = 14\nsteps = [\n  { day = 0, email = "payment-failed" },\n'
               '  { day = 3, email = "remider" },\n]\n')


def test_a_step_naming_no_template_stops_the_policy_with_one_line_naming_the_step_and_the_templates():
    from worker.delivery.emails import TEMPLATES
    raw = {"schedules": {"default": {"disrupt_after_days": 14,
                                     "steps": steps((0, "payment-failed"), (3, "remider"))}}}
    with pytest.raises(PolicyError) as caught:
        parse_policy(raw, templates=TEMPLATES)
    message = str(caught.value)
    assert "\n" not in message
    assert "[schedules.default] step on day 3 names email 'remider'" in message
    assert f"(known: {', '.join(sorted(TEMPLATES))})" in message
    assert parse_policy(raw).schedules["default"].steps[1].email == "remider"  # unchecked without templates


def test_the_service_start_up_refuses_a_misspelt_step_email(make_runtime, tmp_path):
    policy = tmp_path / "typo.toml"
    policy.write_text(TYPO_POLICY)
    with pytest.raises(PolicyError, match="step on day 3 names email 'remider'"):
        make_runtime(DUNNING_POLICY=str(policy))  # worker.runtime.setup: every process starts there


def test_a_step_may_name_a_template_folder_of_email_templates_dir(tmp_path):
    from worker.delivery.emails import template_names
    folder = tmp_path / "courtesy-call"
    folder.mkdir()
    for part in ("subject.txt", "body.txt", "body.html"):
        (folder / part).write_text("x")
    raw = {"schedules": {"default": {"disrupt_after_days": 14,
                                     "steps": steps((0, "payment-failed"), (1, "courtesy-call"))}}}
    assert parse_policy(raw, templates=template_names(tmp_path)).schedules["default"].steps[1].email == "courtesy-call"
    with pytest.raises(PolicyError, match="courtesy-call"):
        parse_policy(raw, templates=template_names())
