"""The web process's gunicorn worker: requests are read whole before they take a thread.

gunicorn's gthread worker hands every new connection to a pool thread, which then parses the
request with blocking reads: a client that sends headers and a few body bytes and stalls holds
that thread for as long as it likes, and a few dozen such connections hold them all (webhooks,
the admin API and /healthz then time out). This worker keeps gthread (its pool, keep-alive and
graceful shutdown) but reads each request -- head and body, Content-Length or chunked -- in the
worker's event loop with non-blocking reads, under one total deadline per request
(WEB_READ_TIMEOUT, default 10 s, counted from the request's first byte so trickling one byte at
a time does not extend it). Only a complete request reaches a pool thread, already in memory.

- A request not complete by its deadline is answered 408 and closed.
- A body over MAX_BODY_BYTES (1 MiB) is answered 413 while it is being read, and closed.
- A head over MAX_HEAD_BYTES is answered 431 and closed.

The framing read here only decides when the request is complete; gunicorn's own parser still
parses it (from the buffer) and answers 400 to anything malformed. Should the two ever disagree,
the pool thread's socket has a timeout, so it cannot block for longer than WEB_READ_TIMEOUT.
"""

from __future__ import annotations

import errno
import json
import selectors
import time
from functools import partial

from gunicorn import http
from gunicorn.workers.gthread import TConn, ThreadWorker

from worker.web.http_util import MAX_BODY_BYTES

MAX_HEAD_BYTES = 64 * 1024
RECV_BYTES = 64 * 1024
DEFAULT_READ_TIMEOUT = 10.0


class IncompleteFraming(Exception):
    """The bytes so far do not hold a whole request yet."""


class BodyTooLarge(Exception):
    """The declared or received body is over the limit."""


def request_end(buf: bytes | bytearray, limit: int = MAX_BODY_BYTES) -> int:
    """Where the first whole HTTP/1.x request in `buf` ends (an index into buf).

    Raises IncompleteFraming when more bytes are needed and BodyTooLarge when the body is over
    `limit`. Framing that is malformed counts as complete at the end of the head: gunicorn's
    parser then refuses it with 400 without reading further.
    """
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        raise IncompleteFraming()
    body_start = head_end + 4
    lines = bytes(buf[:head_end]).split(b"\r\n")[1:]
    length_values, chunked = [], False
    for line in lines:
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        name = name.strip().lower()
        if name == b"content-length":
            length_values.append(value.strip())
        elif name == b"transfer-encoding":
            chunked = chunked or b"chunked" in value.lower()
    if chunked:
        return _chunked_end(buf, body_start, limit)
    if not length_values:
        return body_start
    if len(set(length_values)) != 1 or not length_values[0].isdigit() or len(length_values[0]) > 18:
        return body_start  # gunicorn answers 400 to this head
    length = int(length_values[0])
    if length > limit:
        raise BodyTooLarge()
    if len(buf) - body_start < length:
        raise IncompleteFraming()
    return body_start + length


def _chunked_end(buf, pos: int, limit: int) -> int:
    total = 0
    while True:
        line_end = buf.find(b"\r\n", pos)
        if line_end < 0:
            if len(buf) - pos > 1024:
                return len(buf)  # a size line this long is malformed: let gunicorn refuse it
            raise IncompleteFraming()
        size_text = bytes(buf[pos:line_end]).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16) if size_text and len(size_text) <= 16 else -1
        except ValueError:
            size = -1
        if size < 0:
            return line_end + 2  # malformed: gunicorn refuses it
        pos = line_end + 2
        if size == 0:
            while True:  # trailers, up to the empty line
                line_end = buf.find(b"\r\n", pos)
                if line_end < 0:
                    raise IncompleteFraming()
                if line_end == pos:
                    return pos + 2
                pos = line_end + 2
        total += size
        if total > limit:
            raise BodyTooLarge()
        if len(buf) < pos + size + 2:
            raise IncompleteFraming()
        pos += size + 2


def _canned(status: str, message: str) -> bytes:
    body = json.dumps({"error": message}).encode() + b"\n"
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode() + body


class _Conn(TConn):
    """A connection whose pool-thread reads and writes time out (see the module docstring)."""

    read_timeout = DEFAULT_READ_TIMEOUT

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.buffer = bytearray()
        self.deadline: float | None = None  # set at the request's first byte
        self.complete = False
        self.continue_sent = False

    def init(self):
        super().init()
        self.sock.settimeout(self.read_timeout)


class BufferingThreadWorker(ThreadWorker):
    """gthread, with every request read whole in the event loop before it takes a thread."""

    read_timeout = DEFAULT_READ_TIMEOUT
    max_body = MAX_BODY_BYTES

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reading: dict[_Conn, float] = {}  # connections being read -> their idle deadline

    def accept(self, listener):
        try:
            client_sock, client_addr = listener.accept()
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn = _Conn(self.cfg, client_sock, client_addr, listener.getsockname())
        conn.read_timeout = self.read_timeout
        self.enqueue_req(conn)

    def enqueue_req(self, conn):
        """Complete requests go to the pool; anything else is read in the event loop first."""
        if self.cfg.is_ssl or not isinstance(conn, _Conn) or conn.complete:
            conn.complete = False
            return super().enqueue_req(conn)
        if conn.parser is not None:  # keep-alive: bytes read ahead belong to the next request
            conn.buffer[:0] = conn.parser.unreader.take_buffered()
        conn.sock.setblocking(False)
        conn.deadline = time.monotonic() + self.read_timeout if conn.buffer else None
        # Before the first byte a connection may idle as long as gunicorn's first-data wait.
        self.reading[conn] = time.monotonic() + max(self.read_timeout, self.cfg.keepalive or 0)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))
        if conn.buffer:
            self._check_complete(conn)

    def _on_readable(self, conn: _Conn, _sock) -> None:
        try:
            data = conn.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return self._drop(conn)
        if not data:
            return self._drop(conn)
        if conn.deadline is None:
            conn.deadline = time.monotonic() + self.read_timeout
        conn.buffer += data
        self._check_complete(conn)

    def _check_complete(self, conn: _Conn) -> None:
        try:
            request_end(conn.buffer, self.max_body)
        except IncompleteFraming:
            if len(conn.buffer) > MAX_HEAD_BYTES and conn.buffer.find(b"\r\n\r\n") < 0:
                return self._refuse(conn, "431 Request Header Fields Too Large", "request head too large")
            if not conn.continue_sent and b"100-continue" in conn.buffer[:MAX_HEAD_BYTES].lower() \
                    and conn.buffer.find(b"\r\n\r\n") >= 0:
                conn.continue_sent = True
                self._send(conn, b"HTTP/1.1 100 Continue\r\n\r\n")
            return None
        except BodyTooLarge:
            return self._refuse(conn, "413 Content Too Large", f"body too large: limit is {self.max_body} bytes")
        self._stop_reading(conn)
        if conn.parser is None:
            conn.parser = http.get_parser(self.cfg, conn.sock, conn.client)
        conn.parser.unreader.unread(bytes(conn.buffer))
        conn.buffer = bytearray()
        conn.deadline = None
        conn.data_ready = True
        conn.complete = True
        conn.continue_sent = False
        self.enqueue_req(conn)

    def _stop_reading(self, conn: _Conn) -> None:
        self.reading.pop(conn, None)
        try:
            self.poller.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass

    def _send(self, conn: _Conn, data: bytes) -> None:
        try:
            conn.sock.send(data)
        except OSError:
            pass

    def _refuse(self, conn: _Conn, status: str, message: str) -> None:
        self.log.info("web.request_refused: %s from %s", status, conn.client[0] if conn.client else "?")
        self._send(conn, _canned(status, message))
        self._drop(conn)

    def _drop(self, conn: _Conn) -> None:
        self._stop_reading(conn)
        self.nr_conns -= 1
        try:
            conn.close()
        except OSError:
            pass

    def murder_pending(self):
        """Also close connections whose request is late (408) or that never sent a byte."""
        super().murder_pending()
        now = time.monotonic()
        for conn, idle_deadline in list(self.reading.items()):
            if conn.deadline is None and not self.alive:
                self._drop(conn)  # stopping: a connection that sent nothing is not waited for
            elif conn.deadline is not None and now >= conn.deadline:
                self._refuse(conn, "408 Request Timeout",
                             f"request not received within {self.read_timeout:g} s")
            elif conn.deadline is None and now >= idle_deadline:
                self._drop(conn)

    def run(self):
        try:
            super().run()
        finally:
            for conn in list(self.reading):
                self._drop(conn)
