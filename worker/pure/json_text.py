"""JSON in TEXT columns: compact, stable key order out; a default for empty values in."""

from __future__ import annotations

import json
from typing import Any


def dumps(value: Any) -> str:
    """JSON for TEXT columns: compact, stable key order."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)


def loads(value: str | None, default: Any = None) -> Any:
    if value in (None, ""):
        return default
    return json.loads(value)
