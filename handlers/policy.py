"""The dunning policy (config/policy.toml): who gets mail, who is left alone, which schedule applies.

Read once per process (`runtime.policy`) and validated up front, so a typo in the file stops the
service at start instead of silently skipping a step weeks later. That includes the email of each
step: the caller passes the templates there are (worker.delivery.emails.template_names), and a step naming
another stops start-up with one line naming the step and the known templates.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Collection

from config.settings import ConfigError

ACTIONS = ("schedule_disruption", "disrupt")
UNREACHABLE_CHOICES = ("hold", "proceed")

# Deliberately strict: one local part, one domain with a dot, no spaces, no CR/LF, no commas
# or angle brackets (a second address or a header injection could hide behind those).
_EMAIL = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$")


class PolicyError(ConfigError):
    """Raised when the policy file is missing, unreadable or inconsistent (message says where)."""


@dataclass(frozen=True)
class Step:
    """One step of a schedule: on `day` after the first failure send `email`, then do `action`."""

    day: int
    email: str
    action: str | None = None


@dataclass(frozen=True)
class Schedule:
    name: str
    steps: tuple[Step, ...]
    disrupt_after_days: int
    prices: tuple[str, ...] = ()
    products: tuple[str, ...] = ()

    def step(self, index: int | None) -> Step | None:
        if index is None or not 0 <= index < len(self.steps):
            return None
        return self.steps[index]


@dataclass(frozen=True)
class PaymentLinkPolicy:
    bank_minimums: dict[str, int]
    daily_limit_per_invoice: int
    expires_after_hours: int


@dataclass(frozen=True)
class RetentionPolicy:
    """[retention]: how many days each kind of record is kept (worker/privacy/retention.py applies it)."""

    event_payload_days: int = 35    # an event's raw body, after it was processed
    event_days: int = 400           # its id, type, object id, created and status
    email_content_days: int = 35    # a delivered email's subject, bodies and recipient
    closed_case_days: int = 400     # a closed case and all its rows, after it closed


RETENTION_KEYS = tuple(RetentionPolicy.__dataclass_fields__)


@dataclass(frozen=True)
class Policy:
    recipient_source: str
    exclude_customer_metadata: dict[str, str]
    schedules: dict[str, Schedule]
    payment_links: PaymentLinkPolicy
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)
    path: Path | None = None
    # The owner is really warned (issue 12): days between the delivered disruption warning and the
    # disruption, hours between two dunning emails (day 0 apart), what an unreachable owner gets.
    min_warning_days: int = 3
    min_gap_hours: int = 20
    unreachable: str = "hold"
    max_immediate_retries_per_day: int = 3
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def recipient_for(self, customer_row: dict | None) -> str | None:
        """The owner of record's address (per [recipient] source), or None when it is not usable."""
        if not customer_row or customer_row.get("deleted"):
            return None
        if self.recipient_source == "customer.email":
            candidate = customer_row.get("email")
        else:
            key = self.recipient_source[len("customer.metadata."):]
            metadata = customer_row.get("metadata")
            if isinstance(metadata, str):
                from worker.pure.json_text import loads
                try:
                    metadata = loads(metadata, {})
                except ValueError:
                    metadata = {}
            candidate = metadata.get(key) if isinstance(metadata, dict) else None
        if not isinstance(candidate, str):
            return None
        candidate = candidate.strip()
        if len(candidate) > 254 or not _EMAIL.match(candidate):
            return None
        return candidate

    def is_excluded(self, customer_metadata: dict | None) -> bool:
        """True when the customer's Stripe metadata matches one of the [exclude] pairs."""
        if not customer_metadata:
            return False
        return any(str(customer_metadata.get(k)) == v for k, v in self.exclude_customer_metadata.items()
                   if k in customer_metadata)

    def schedule_for(self, price_ids: list[str] | None, product_ids: list[str] | None) -> Schedule:
        """The schedule naming one of the prices, else one of the products, else `default`."""
        prices, products = set(price_ids or ()), set(product_ids or ())
        for name, schedule in self.schedules.items():
            if name != "default" and prices & set(schedule.prices):
                return schedule
        for name, schedule in self.schedules.items():
            if name != "default" and products & set(schedule.products):
                return schedule
        return self.schedules["default"]

    def schedule_named(self, name: str) -> Schedule:
        """The schedule a case was opened with (falls back to default if the file dropped it)."""
        return self.schedules.get(name) or self.schedules["default"]


def load_policy(path: str | Path, templates: Collection[str] | None = None) -> Policy:
    """The policy file, checked; `templates`: the email templates there are (None: not checked)."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise PolicyError(f"policy file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"policy file {path}: {exc}") from None
    return parse_policy(raw, path, templates)


def parse_policy(raw: dict[str, Any], path: Path | None = None,
                 templates: Collection[str] | None = None) -> Policy:
    where = str(path or "policy")
    source = str((raw.get("recipient") or {}).get("source", "customer.email"))
    if not (source == "customer.email" or (source.startswith("customer.metadata.")
                                           and len(source) > len("customer.metadata."))):
        raise PolicyError(f"{where}: [recipient] source must be customer.email or customer.metadata.<key>")
    exclude = (raw.get("exclude") or {}).get("customer_metadata") or {}
    if not isinstance(exclude, dict):
        raise PolicyError(f"{where}: [exclude] customer_metadata must be a table of key = value")
    schedules_raw = raw.get("schedules") or {}
    if "default" not in schedules_raw:
        raise PolicyError(f"{where}: [schedules.default] is required")
    schedules = {name: _parse_schedule(name, body, where) for name, body in schedules_raw.items()}
    if templates is not None:
        _check_emails(schedules, templates, where)
    links = raw.get("payment_links") or {}
    payment_links = PaymentLinkPolicy(
        bank_minimums={str(k).lower(): int(v) for k, v in (links.get("bank_minimums") or {}).items()},
        daily_limit_per_invoice=int(links.get("daily_limit_per_invoice", 5)),
        expires_after_hours=int(links.get("expires_after_hours", 72)),
    )
    try:
        min_warning_days = int(raw.get("min_warning_days", 3))
        min_gap_hours = int(raw.get("min_gap_hours", 20))
        max_retries = int(raw.get("max_immediate_retries_per_day", 3))
    except (TypeError, ValueError):
        raise PolicyError(f"{where}: min_warning_days, min_gap_hours and max_immediate_retries_per_day "
                          "must be integers") from None
    if min_warning_days < 1 or min_gap_hours < 0 or max_retries < 0:
        raise PolicyError(f"{where}: min_warning_days must be >= 1, min_gap_hours and "
                          "max_immediate_retries_per_day >= 0")
    unreachable = str(raw.get("unreachable", "hold"))
    if unreachable not in UNREACHABLE_CHOICES:
        raise PolicyError(f"{where}: unreachable must be one of {UNREACHABLE_CHOICES}")
    from worker.pure.email_time import settings_of as email_time_settings
    from worker.pure.locales import default_locale as email_default_locale
    try:
        email_time_settings(type("P", (), {"raw": raw})())  # [emails]: the owner's time zone (issue 14)
        coalesce_window(type("P", (), {"raw": raw})())  # [emails] coalesce_seconds: one email per account
        email_default_locale(type("P", (), {"raw": raw})())  # [emails]: the language without a preference
    except ValueError as exc:
        raise PolicyError(f"{where}: {exc}") from None
    return Policy(recipient_source=source, exclude_customer_metadata={str(k): str(v) for k, v in exclude.items()},
                  schedules=schedules, payment_links=payment_links, retention=_parse_retention(raw, where),
                  path=path, raw=raw,
                  min_warning_days=min_warning_days, min_gap_hours=min_gap_hours, unreachable=unreachable,
                  max_immediate_retries_per_day=max_retries)


def _check_emails(schedules: dict[str, Schedule], templates: Collection[str], where: str) -> None:
    """Every step's email is a template folder: a misspelt name stops start-up, not the step weeks later."""
    for name, schedule in schedules.items():
        for step in schedule.steps:
            if step.email not in templates:
                raise PolicyError(f"{where}: [schedules.{name}] step on day {step.day} names email {step.email!r},"
                                  f" which is not a template (known: {', '.join(sorted(templates))})")


def _parse_retention(raw: dict[str, Any], where: str) -> RetentionPolicy:
    """[retention]: every value a positive whole number of days; an unknown key is a typo."""
    body = raw.get("retention") or {}
    if not isinstance(body, dict):
        raise PolicyError(f"{where}: [retention] must be a table of <what>_days = <days>")
    unknown = sorted(set(body) - set(RETENTION_KEYS))
    if unknown:
        raise PolicyError(f"{where}: [retention] unknown key {unknown[0]!r} (known: {', '.join(RETENTION_KEYS)})")
    for key, value in body.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise PolicyError(f"{where}: [retention] {key} must be a positive whole number of days, got {value!r}")
    retention = RetentionPolicy(**body)
    if retention.event_payload_days > retention.event_days:
        raise PolicyError(f"{where}: [retention] event_payload_days must not exceed event_days")
    return retention


def _parse_schedule(name: str, body: dict[str, Any], where: str) -> Schedule:
    here = f"{where}: [schedules.{name}]"
    if not isinstance(body, dict):
        raise PolicyError(f"{here} must be a table")
    try:
        disrupt_after = int(body.get("disrupt_after_days", 14))
        steps = tuple(Step(day=int(s["day"]), email=str(s["email"]), action=s.get("action"))
                      for s in body.get("steps") or ())
    except (KeyError, TypeError, ValueError) as exc:
        raise PolicyError(f"{here}: every step needs an integer day and an email ({exc})") from None
    if not steps:
        raise PolicyError(f"{here} has no steps")
    days = [s.day for s in steps]
    if days[0] != 0 or days != sorted(days) or len(set(days)) != len(days):
        raise PolicyError(f"{here}: steps must start at day 0, in increasing order, one per day")
    actions = [s.action for s in steps if s.action is not None]
    for step in steps:
        if step.action is not None and step.action not in ACTIONS:
            raise PolicyError(f"{here}: unknown action {step.action!r} on day {step.day} (known: {ACTIONS})")
        if not re.fullmatch(r"[a-z0-9-]+", step.email):
            raise PolicyError(f"{here}: email on day {step.day} must name a template folder")
    if actions.count("schedule_disruption") > 1 or actions.count("disrupt") > 1:
        raise PolicyError(f"{here}: each action may appear once")
    if "disrupt" in actions:
        if actions != ["schedule_disruption", "disrupt"]:
            raise PolicyError(f"{here}: disrupt needs an earlier schedule_disruption step")
        disrupt_day = next(s.day for s in steps if s.action == "disrupt")
        if disrupt_day != disrupt_after:
            raise PolicyError(f"{here}: the disrupt step is on day {disrupt_day} but disrupt_after_days"
                              f" is {disrupt_after}")
    elif "schedule_disruption" in actions:
        raise PolicyError(f"{here}: schedule_disruption needs a later disrupt step")
    if disrupt_after <= 0:
        raise PolicyError(f"{here}: disrupt_after_days must be positive")
    return Schedule(name=name, steps=steps, disrupt_after_days=disrupt_after,
                    prices=tuple(str(p) for p in body.get("prices") or ()),
                    products=tuple(str(p) for p in body.get("products") or ()))


DEFAULT_COALESCE_SECONDS = 300


def coalesce_window(policy) -> timedelta:
    """[emails] coalesce_seconds of the policy (default 300); raises ValueError when not a whole number >= 0."""
    body = ((getattr(policy, "raw", None) or {}).get("emails") or {}) if policy is not None else {}
    value = body.get("coalesce_seconds", DEFAULT_COALESCE_SECONDS)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"[emails] coalesce_seconds must be a whole number >= 0, got {value!r}")
    return timedelta(seconds=value)
