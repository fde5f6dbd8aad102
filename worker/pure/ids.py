"""Application-made ids: a readable prefix and a random, roughly time-ordered suffix."""

from __future__ import annotations

import os
import time


def new_id(prefix: str) -> str:
    """`<prefix>_<12 hex ms timestamp><16 hex random>`: sortable by creation, unique across workers."""
    return f"{prefix}_{int(time.time() * 1000):012x}{os.urandom(8).hex()}"
