"""SENTRY_DSN: errors reach Sentry (a local fake at its HTTP boundary) with the Dramatiq and Falcon
integrations on and the same scrubbing as the logs; unset, nothing is sent."""

from __future__ import annotations

import gzip
import zlib

import pytest

from tests.support.helpers import ADMIN_TOKEN, wait_until
from tests.support.http_fake import FakeHandler, FakeHTTPServer


class _SentryHandler(FakeHandler):
    def do_POST(self):  # noqa: N802
        raw = self.read_body()
        encoding = self.headers.get("Content-Encoding", "")
        if encoding == "gzip":
            raw = gzip.decompress(raw)
        elif encoding == "deflate":
            raw = zlib.decompress(raw)
        elif encoding == "br":
            import brotli  # pragma: no cover - only if the SDK picks brotli
            raw = brotli.decompress(raw)
        self.fake.bodies.append(raw.decode("utf-8", "replace"))
        self.answer(200)


class FakeSentry(FakeHTTPServer):
    """Accepts envelopes at /api/<project>/envelope/ and keeps their bodies."""

    handler = _SentryHandler

    def __init__(self):
        super().__init__()
        self.bodies: list[str] = []
        self.start()
        self.dsn = f"http://publickey0123456789abcdef@127.0.0.1:{self.port}/1"


@pytest.fixture
def sentry():
    import sentry_sdk

    from worker.observe import error_tracking
    fake = FakeSentry()
    yield fake
    sentry_sdk.get_client().close(timeout=2)
    sentry_sdk.get_global_scope().set_client(None)  # off again for the rest of the session
    error_tracking._initialised_dsn = None
    fake.stop()


def test_an_error_reaches_sentry_scrubbed_with_dramatiq_and_falcon_integrations(make_runtime, sentry):
    import sentry_sdk
    runtime = make_runtime(SENTRY_DSN=sentry.dsn)
    client = sentry_sdk.get_client()
    assert client.is_active()
    assert {"dramatiq", "falcon"} <= set(client.integrations)
    try:
        raise RuntimeError(f"cannot notify ada.lovelace@example.com with token {ADMIN_TOKEN}")
    except RuntimeError as exc:
        sentry_sdk.capture_exception(exc)
    client.flush(timeout=5)
    body = wait_until(lambda: next((b for b in sentry.bodies if "RuntimeError" in b), None), timeout=10,
                      message="the event at the fake Sentry")
    assert ADMIN_TOKEN not in body and "ada.lovelace@example.com" not in body
    assert "[email]" in body and "***" in body  # logs and error reports: no address, not even masked
    assert runtime.settings.sentry_dsn == sentry.dsn


def test_without_sentry_dsn_nothing_is_set_up(runtime):
    import sentry_sdk
    assert runtime.settings.sentry_dsn is None
    assert sentry_sdk.get_client().dsn is None  # no client that could send anything
