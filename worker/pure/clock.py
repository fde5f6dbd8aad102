"""Time in one place: naive UTC datetimes everywhere (the schema stores naive UTC TIMESTAMPs)."""

from __future__ import annotations

from datetime import datetime, timezone


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def from_unix(seconds: int | float | None) -> datetime | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(int(seconds), timezone.utc).replace(tzinfo=None)


def to_unix(moment: datetime | None) -> int | None:
    if moment is None:
        return None
    return int(moment.replace(tzinfo=timezone.utc).timestamp())


def parse_instant(text: str) -> datetime:
    """Parse an ISO-8601 instant such as 2026-12-01T00:00:00Z (or a date) into naive UTC."""
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return value


def isoformat(moment: datetime | None) -> str | None:
    return None if moment is None else moment.replace(microsecond=0).isoformat() + "Z"
