"""One pooled keep-alive HTTP client per process for the outgoing calls on the hot path.

SendGrid's SDK (python_http_client) and urllib open a new connection, and a new opener, for every
request: a TCP (and TLS) handshake per email and per platform notice was 6.5 % of the workers'
CPU. Here one urllib3 PoolManager, made on first use in each process (a forked child makes its
own: sockets are never shared across a fork), keeps connections open per host for all threads.

Every call has an explicit timeout (connect and read); no automatic retries (the outbox rows
hold the retry schedule) and no redirects (a redirect is not an acknowledgement).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import urllib3

POOL_SIZE = 16   # connections kept per host: the worker's threads, with room
_lock = threading.Lock()
_pool: tuple[int, urllib3.PoolManager] | None = None

# What a failed exchange raises: urllib3's own errors (connect, read timeout, protocol) and the
# socket's.
NETWORK_ERRORS = (urllib3.exceptions.HTTPError, OSError)


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict  # names in lower case
    body: bytes  # at most `read_limit` bytes: callers keep a short detail, never a whole page


def pool() -> urllib3.PoolManager:
    """This process's pool (made on first use, again after a fork)."""
    global _pool
    current = _pool
    if current is not None and current[0] == os.getpid():
        return current[1]
    with _lock:
        if _pool is None or _pool[0] != os.getpid():
            _pool = (os.getpid(), urllib3.PoolManager(num_pools=8, maxsize=POOL_SIZE, block=False,
                                                      retries=False))
        return _pool[1]


def post(url: str, body: bytes, headers: dict[str, str], timeout: float, read_limit: int = 1024) -> Response:
    """POST `body` on a kept-alive connection; raise one of NETWORK_ERRORS when no answer came."""
    response = pool().request("POST", url, body=body, headers=headers, redirect=False, retries=False,
                              timeout=urllib3.Timeout(connect=timeout, read=timeout), preload_content=False)
    try:
        data = response.read(read_limit)
        response.drain_conn()  # the rest, so the connection goes back to the pool clean
    finally:
        response.release_conn()
    return Response(response.status, {k.lower(): v for k, v in response.headers.items()}, data)
