"""`dunning policy show`: the state machine's transition table and the schedules, day by day."""

from __future__ import annotations

import click

from worker.cli.base import emit, main


def policy_document(policy) -> dict:
    """The policy as data: the transition table, and per schedule what happens on which day."""
    from handlers.dunning import (DISRUPTED, DISRUPTION_SCHEDULED, RECOVERED, STATES, TERMINAL_STATES, UNCOLLECTIBLE,
                                  VOIDED, transition_rows)

    schedules = {}
    for name, schedule in policy.schedules.items():
        days = []
        for index, step in enumerate(schedule.steps):
            state, notice = None, None
            if step.action == "schedule_disruption":
                state = DISRUPTION_SCHEDULED
                notice = f"service.disruption_scheduled (disrupt_at = day {schedule.disrupt_after_days})"
            elif step.action == "disrupt":
                state, notice = DISRUPTED, "service.disrupted (only if still unpaid)"
            days.append({"step": index, "day": step.day, "email": step.email, "action": step.action,
                         "state_change": state, "platform_notice": notice})
        schedules[name] = {"disrupt_after_days": schedule.disrupt_after_days, "prices": list(schedule.prices),
                           "products": list(schedule.products), "steps": days}
    return {
        "policy_file": str(policy.path) if policy.path else None,
        "recipient": policy.recipient_source,
        "exclude_customer_metadata": policy.exclude_customer_metadata,
        "states": list(STATES),
        "terminal_states": list(TERMINAL_STATES),
        "transitions": transition_rows(),
        "schedules": schedules,
        "on_end": {
            RECOVERED: "steps cancelled; payment-received email (saying service is restored) and service.restored"
                         " when service had been disrupted and no unpaid invoice of the account remains;"
                         " service.disruption_cancelled when paid before the date",
            VOIDED: "steps cancelled; service.disruption_cancelled before the date; after it service.restored"
                      " when the invoice was voided (not when its subscription was deleted) and no unpaid"
                      " invoice of the account remains",
            UNCOLLECTIBLE: "steps cancelled; service.disruption_cancelled before the date (service stays"
                             " disrupted after it)",
        },
    }


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(out)


def render_policy(doc: dict) -> None:
    click.echo(f"Policy: {doc['policy_file']}")
    click.echo(f"Billing mail goes to: {doc['recipient']}; excluded when customer metadata has"
               f" {doc['exclude_customer_metadata']}")
    click.echo("")
    click.echo("Transitions (a pair not listed raises InvalidTransition; ends: "
               + ", ".join(doc["terminal_states"]) + ")")
    click.echo(_table(["from", "trigger", "to"], [[t["from"], t["trigger"], t["to"]] for t in doc["transitions"]]))
    for name, schedule in doc["schedules"].items():
        click.echo("")
        applies = ""
        if schedule["prices"] or schedule["products"]:
            applies = f" (prices {schedule['prices']}, products {schedule['products']})"
        click.echo(f"Schedule {name}{applies}: days after the first failed payment;"
                   f" disruption on day {schedule['disrupt_after_days']}")
        click.echo(_table(["day", "email", "state change", "platform notice"],
                          [[str(s["day"]), s["email"], s["state_change"] or "-", s["platform_notice"] or "-"]
                           for s in schedule["steps"]]))
    click.echo("")
    for state, what in doc["on_end"].items():
        click.echo(f"On {state}: {what}")


def _policy_path():
    """DUNNING_POLICY as the service reads it; the policy alone needs no other setting."""
    from config.settings import ConfigError, load_settings
    try:
        return load_settings().dunning_policy
    except ConfigError:
        import os
        from config.settings import PROJECT_ROOT
        return os.environ.get("DUNNING_POLICY") or PROJECT_ROOT / "config" / "policy.toml"


@main.group()
def policy() -> None:
    """The dunning policy (config/policy.toml) and the state machine."""


@policy.command("show")
@click.option("--json", "as_json", is_flag=True)
def policy_show(as_json: bool) -> None:
    """Print the transition table and each schedule day by day (emails, state changes, notices)."""
    from handlers.policy import load_policy
    try:
        loaded = load_policy(_policy_path())
    except Exception as exc:
        click.echo(f"configuration error: {exc}", err=True)
        raise SystemExit(2)
    emit(policy_document(loaded), as_json, render_policy)
