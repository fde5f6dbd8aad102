"""Fakes of what lies outside our walls, at their HTTP boundary, with scripted failures.

`ScriptedServer` answers every POST from a per-test script (status, headers, body, or a hang).
`FakeSendGrid` answers POST /v3/mail/send like SendGrid v3 (202 + X-Message-Id), or, while its
failure script lasts, 429, 500 or a hang longer than the client's timeout. `FakePlatform`
receives signed notices, checks the Dunning-Signature, and fails while its script lasts. Both
count what they ACCEPTED by dedupe identity (the email id in custom_args; the notice id in the
body), which is how "delivered exactly once" is measured.

A scripted timeout hangs before accepting and then drops the connection: the message was not
taken (SendGrid's behaviour on a gateway timeout we cannot know; a fake that accepted and then
hung would make the at-least-once duplicate of any HTTP client without idempotency keys).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import uuid
from collections import Counter, defaultdict, deque
from contextlib import contextmanager

from tests.support.http_fake import FakeHandler, FakeHTTPServer
from tests.support.ports import free_port  # noqa: F401  (a receiver that is down, then brought back)


class FakeSendGrid(FakeHTTPServer):
    """SendGrid v3 mail/send with a failure script: e.g. ["429", "500", "timeout"] then healthy."""

    def __init__(self, api_key: str = "SG.fake-key-for-tests", hang_seconds: float = 17.0):
        super().__init__()
        self.api_key = api_key
        self.hang_seconds = hang_seconds
        self.script: deque[str] = deque()
        self.accepted: Counter = Counter()          # email id -> times accepted
        self.by_identity: Counter = Counter()       # (template, invoice, customer) -> times accepted
        self.messages: list[dict] = []
        self.failures: Counter = Counter()
        self.unauthorized = 0
        self.hold_next = 0                       # hold this many accepted messages before answering
        self.hold_release = threading.Event()    # ...until this is set
        self.holding = threading.Event()         # set while a message is held

    def hold(self, count: int = 1) -> None:
        """Accept the next `count` messages but answer only once `hold_release` is set."""
        with self.lock:
            self.hold_next = count
        self.hold_release.clear()

    def fail_next(self, *outcomes: str) -> None:
        with self.lock:
            self.script.extend(outcomes)

    def _next_outcome(self) -> str | None:
        with self.lock:
            return self.script.popleft() if self.script else None

    def duplicates(self) -> dict:
        return {k: n for k, n in self.accepted.items() if n > 1}

    def by_template(self) -> dict[str, int]:
        """Accepted messages per X-Dunning-Template."""
        with self.lock:
            counts: Counter = Counter()
            for (template, _invoice, _customer), n in self.by_identity.items():
                counts[template] += n
            return dict(counts)


class _SendGridHandler(FakeHandler):
    fake: FakeSendGrid

    def do_POST(self):
        fake = self.fake
        body = self.read_body()
        if self.path != "/v3/mail/send":
            return self.answer(404, b'{"errors":[{"message":"not found"}]}')
        if self.headers.get("Authorization") != f"Bearer {fake.api_key}":
            with fake.lock:
                fake.unauthorized += 1
            return self.answer(401, b'{"errors":[{"message":"unauthorized"}]}')
        outcome = fake._next_outcome()
        if outcome is not None:
            with fake.lock:
                fake.failures[outcome] += 1
            if outcome == "timeout":
                return self.hang_up(fake.hang_seconds)
            return self.answer(int(outcome), json.dumps({"errors": [{"message": f"scripted {outcome}"}]}).encode(),
                                {"Content-Type": "application/json", "Retry-After": "1"})
        message = json.loads(body)
        args = message.get("custom_args") or {}
        headers = message.get("headers") or {}
        identity = (headers.get("X-Dunning-Template"), headers.get("X-Dunning-Invoice"),
                    headers.get("X-Dunning-Customer"))
        with fake.lock:
            fake.accepted[args.get("email_id")] += 1
            fake.by_identity[identity] += 1
            fake.messages.append(message)
            held = fake.hold_next > 0
            fake.hold_next -= held
        if held:  # taken (it will be delivered), the answer is late
            fake.holding.set()
            fake.hold_release.wait(60)
        self.answer(202, b"", {"X-Message-Id": uuid.uuid4().hex})


class FakePlatform(FakeHTTPServer):
    """The platform's notice receiver: verifies the signature, fails while its script lasts."""

    def __init__(self, secret: str = "platform-secret-for-tests"):
        super().__init__()
        self.secret = secret
        self.script: deque[int] = deque()
        self.accepted: Counter = Counter()                  # notice id -> times accepted
        self.order: dict[str, list[int]] = defaultdict(list)  # account -> seqs in arrival order
        self.notices: list[dict] = []
        self.failures = 0
        self.bad_signatures = 0

    def fail_next(self, count: int, status: int = 500) -> None:
        with self.lock:
            self.script.extend([status] * count)

    def duplicates(self) -> dict:
        return {k: n for k, n in self.accepted.items() if n > 1}


def verify_dunning_signature(body: bytes, header: str | None, secret: str) -> bool:
    if not header:
        return False
    parts = dict(item.split("=", 1) for item in header.split(",") if "=" in item)
    expected = hmac.new(secret.encode(), f"{parts.get('t')}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts.get("v1", ""))


class _PlatformHandler(FakeHandler):
    fake: FakePlatform

    def do_POST(self):
        fake = self.fake
        body = self.read_body()
        if not verify_dunning_signature(body, self.headers.get("Dunning-Signature"), fake.secret):
            with fake.lock:
                fake.bad_signatures += 1
            return self.answer(400, b"bad signature")
        with fake.lock:
            status = fake.script.popleft() if fake.script else None
            if status is not None:
                fake.failures += 1
        if status is not None:
            return self.answer(status, b"scripted failure")
        notice = json.loads(body)
        with fake.lock:
            fake.accepted[notice["id"]] += 1
            fake.notices.append(notice)
        self.answer(200, b'{"ok":true}', {"Content-Type": "application/json"})

FakeSendGrid.handler = _SendGridHandler
FakePlatform.handler = _PlatformHandler


# -- a receiver scripted per test ---------------------------------------------------------------
class _ScriptedHandler(FakeHandler):
    fake: "ScriptedServer"

    def do_POST(self):  # noqa: N802 (http.server naming)
        fake = self.fake
        raw = self.read_body()
        with fake.lock:
            request = {"path": self.path, "headers": dict(self.headers.items()), "raw": raw,
                       "n": len(fake.requests) + 1}
            fake.requests.append(request)
        answer = fake.script(request["n"], request)
        if answer == "hang":
            return self.hang_up(fake.hang_seconds)
        status, headers, body = answer
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.answer(status, data, {**headers, "Content-Type": "application/json"})
        request["answered"] = status


class ScriptedServer(FakeHTTPServer):
    """A receiver that records every request and answers from a script.

    `script(request_number, request) -> (status, headers, body)` or the string "hang" (hold the
    connection past the client's timeout, then close it without an answer).
    """

    handler = _ScriptedHandler

    def __init__(self, script, port: int = 0):
        super().__init__(port)
        self.script = script
        self.requests: list[dict] = []
        self.hang_seconds = 2.0

    def answered(self, status: int) -> list[dict]:
        return [r for r in self.requests if r.get("answered") == status]


@contextmanager
def scripted_server(script, port: int = 0):
    with ScriptedServer(script, port) as server:
        yield server
