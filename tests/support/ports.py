"""A port for a server a test starts: free now, and outside the range the kernel hands out to
outgoing connections, so a client socket opened meanwhile (to PostgreSQL, Redis, RabbitMQ, a
fake) cannot take it before the server binds. Port 0 would pick from that very range: a worker's
metrics server once found its port taken by such a connection (`Address already in use`)."""

from __future__ import annotations

import random
import socket
from pathlib import Path

_FIRST = 10000


def _ephemeral_low() -> int:
    """The lowest port of the kernel's range for outgoing connections (Linux; 32768 elsewhere)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A port nothing listens on now, below the ephemeral range (bound once to check, then closed)."""
    low = _ephemeral_low()
    for _ in range(200):
        port = random.randrange(_FIRST, low) if low > _FIRST + 100 else 0
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise RuntimeError("no free port below the ephemeral range")
