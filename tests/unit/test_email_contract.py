"""The email contract (worker/delivery/email_contract.py): the templates are the folders, each reads exactly
what it declares, each sender's `extra` has the declared shape, and an email-only step is a folder
and one line in the policy."""

from __future__ import annotations

import falcon.testing
import pytest

from tests.support import dunning as fx
from tests.support.dunning import DAY, T0
from tests.support.helpers import post_event
from worker.delivery import email_contract
from worker.delivery.email_context import build_context
from worker.delivery.email_contract import ContractError, check_extra, check_template, declared_variables
from worker.delivery.email_previews import VARIANTS, extra_for, rows_for
from worker.delivery.emails import TEMPLATES, TEMPLATES_DIR, environment, render, template_names
from worker.web.app import create_app


def write_template(root, name, subject="Hello {{ owner_name }}", text="{% extends \"_base.txt\" %}",
                   html="{% extends \"_base.html\" %}"):
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "subject.txt").write_text(subject)
    (folder / "body.txt").write_text(text)
    (folder / "body.html").write_text(html)
    return folder


def test_the_templates_are_the_folders_holding_a_subject_and_two_bodies():
    folders = sorted(p.name for p in TEMPLATES_DIR.iterdir() if (p / "subject.txt").is_file())
    assert list(TEMPLATES) == folders and len(folders) >= 11
    assert set(email_contract.VARIABLES) == set(TEMPLATES)  # every built-in email is declared


@pytest.mark.parametrize("template", TEMPLATES)
def test_every_template_reads_exactly_the_variables_it_declares(template):
    check_template(environment(), template)


@pytest.mark.parametrize("template", TEMPLATES)
def test_every_template_renders_from_its_declared_variables_alone(template):
    """Under StrictUndefined a variable read but not declared would raise here."""
    rows = rows_for(VARIANTS[0])
    full = build_context(**rows, extra=extra_for(template, VARIANTS[0]))
    context = {key: full[key] for key in declared_variables(template) - email_contract.RENDERED}
    rendered = render(template, context)
    assert rendered.subject and rendered.text and "<html" in rendered.html.lower()


def test_a_template_reading_an_undeclared_variable_fails_even_through_its_layout(tmp_path):
    write_template(tmp_path, "reminder", text='{% extends "_base.txt" %}{% block content %}{{ mystery_fee }}'
                                              '{% endblock %}')
    with pytest.raises(ContractError, match="reminder reads mystery_fee"):
        check_template(environment(TEMPLATES_DIR, tmp_path), "reminder")
    (tmp_path / "_macros.txt").write_text((TEMPLATES_DIR / "_macros.txt").read_text()
                                          + "{% macro extra_line() %}{{ hidden_rate }}{% endmacro %}")
    with pytest.raises(ContractError, match="hidden_rate"):  # found in an imported file too
        check_template(environment(TEMPLATES_DIR, tmp_path), "final-notice")


def test_a_declaration_naming_a_variable_its_template_does_not_read_fails(tmp_path):
    write_template(tmp_path, "action-required")  # the layout only: action_url is no longer shown
    with pytest.raises(ContractError, match="declared to read .*action_url"):
        check_template(environment(TEMPLATES_DIR, tmp_path), "action-required")


def test_an_undeclared_folder_may_read_the_context_and_nothing_else(tmp_path):
    write_template(tmp_path, "courtesy-call")
    env = environment(TEMPLATES_DIR, tmp_path)
    check_template(env, "courtesy-call")
    write_template(tmp_path, "typo-call", subject="{{ ownr_name }}")
    with pytest.raises(ContractError, match="typo-call reads ownr_name"):
        check_template(env, "typo-call")


@pytest.mark.parametrize("template", TEMPLATES)
def test_what_each_sender_passes_is_the_declared_extra(template):
    check_extra(template, extra_for(template, VARIANTS[0]))


@pytest.mark.parametrize("template, extra, problem", [
    ("service-restored", {"action_url": "https://invoice.stripe.com/x"}, "must be empty"),
    ("reminder", {"action_url": "https://invoice.stripe.com/x"}, "unknown key 'action_url'"),
    ("reminder", {"invoices": [], "invoice_total": []}, "unknown key 'invoice_total'"),
    ("action-required", {}, "missing key 'action_url'"),
    ("action-required", {"action_url": "https://invoice.stripe.com/x", "actionurl": "x"}, "unknown key 'actionurl'"),
    ("card-expiring", {"card": {"brand": "visa", "last_4": "4242"}}, r"extra of card-expiring\.card: unknown key"),
    ("payment-received", {"service_disrupted": False}, "missing key 'service_restored'"),
])
def test_an_extra_with_a_missing_or_unknown_key_is_refused(template, extra, problem):
    with pytest.raises(ContractError, match=problem):
        check_extra(template, extra)


def test_a_sender_passing_an_undeclared_extra_key_fails_in_its_transaction(runtime):
    from handlers import dedupe_keys
    from tests.support.delivery import in_handler, seed_case
    from tests.support.helpers import rows
    from worker.delivery import outbox
    seed_case(runtime)
    with pytest.raises(ContractError):
        in_handler(runtime, lambda ctx: outbox.add_case_email(
            ctx, "action-required", "dc_test_1", dedupe_keys.action_required(1, case_id="dc_test_1"),
            {"action_link": "https://invoice.stripe.com/x"}))
    assert rows(runtime, "emails") == []


def test_an_email_only_step_is_a_template_folder_and_one_line_in_the_policy(make_runtime, tmp_path):
    templates = tmp_path / "my-templates"
    write_template(templates, "courtesy-call", subject="A friendly note about invoice {{ invoice_number }}",
                   text='{% extends "_base.txt" %}{% block content %}Just checking in.{% endblock %}')
    policy = tmp_path / "policy.toml"
    policy.write_text('[schedules.default]\ndisrupt_after_days = 14\nsteps = [\n'
                      '  { day = 0, email = "payment-failed" },\n'
                      '  { day = 1, email = "courtesy-call" },\n'  # the one line
                      '  { day = 3, email = "reminder" },\n]\n')
    runtime = make_runtime(DUNNING_POLICY=str(policy), EMAIL_TEMPLATES_DIR=str(templates))
    assert "courtesy-call" in template_names(runtime.settings.email_templates_dir)
    client = falcon.testing.TestClient(create_app(runtime))
    evt = fx.failed()
    fx.know_owner(runtime, evt)
    assert post_event(client, evt).status_code == 200
    fx.drain_queues(runtime, ("events", "steps"))
    fx.tick(runtime, T0 + 1 * DAY)
    assert fx.templates(runtime) == ["payment-failed", "courtesy-call"]
    [email] = [e for e in fx.emails(runtime) if e["template"] == "courtesy-call"]
    assert email["subject"].startswith("A friendly note about invoice")
    assert (email["kind"], email["step"]) == ("step", 1)
