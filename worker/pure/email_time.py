"""The owner's time zone for the dates an email states ([emails] in the policy file).

Why: a disruption scheduled at the hour of the first failure, stated in UTC as a bare date, can be the
evening before for an owner in California (issue 14). Every deadline is therefore written as date, time
and zone ("December 16, 2026 at 09:00 PST"), in the zone the platform keeps in the customer's Stripe
metadata (`timezone_metadata_key`, an IANA name such as "Europe/Berlin"), else the policy's default.

    [emails]
    timezone_metadata_key = "timezone"   # customer.metadata key holding an IANA zone
    default_timezone = "UTC"             # when the customer has none (or an unknown one)
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DEFAULT_KEY = "timezone"
DEFAULT_ZONE = "UTC"


def zone(name: Any) -> ZoneInfo | None:
    """The ZoneInfo of an IANA name, None for anything else (metadata is customer-controlled)."""
    if not isinstance(name, str) or not name.strip() or len(name) > 64 or ".." in name:
        return None
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def settings_of(policy: Any) -> tuple[str, str]:
    """(metadata key, default zone name) from the policy's [emails] table; raises ValueError if bad."""
    body = ((getattr(policy, "raw", None) or {}).get("emails") or {}) if policy is not None else {}
    key = str(body.get("timezone_metadata_key", DEFAULT_KEY))
    default = str(body.get("default_timezone", DEFAULT_ZONE))
    if zone(default) is None:
        raise ValueError(f"[emails] default_timezone must be an IANA time zone, got {default!r}")
    return key, default


def owner_timezone(policy: Any, customer: dict | None) -> str:
    """The zone name for this owner: customer metadata (policy key), else the policy default."""
    key, default = settings_of(policy)
    metadata = (customer or {}).get("metadata")
    if isinstance(metadata, str):
        try:
            metadata = json.loads(metadata)
        except ValueError:
            metadata = {}
    candidate = metadata.get(key) if isinstance(metadata, dict) else None
    return candidate.strip() if zone(candidate) is not None else default


def as_zone(value: datetime, name: str | None) -> datetime:
    """A naive UTC datetime (our columns) seen in the named zone."""
    aware = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    return aware.astimezone(zone(name) or timezone.utc)
