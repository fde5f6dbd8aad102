"""Fixtures of the system tier."""

from __future__ import annotations

import pytest

from tests.support.fake_receivers import FakePlatform, FakeSendGrid


@pytest.fixture
def fakes():
    """The SendGrid and platform fakes, started, as (sendgrid, platform)."""
    sendgrid, platform = FakeSendGrid().start(), FakePlatform().start()
    yield sendgrid, platform
    sendgrid.stop()
    platform.stop()
