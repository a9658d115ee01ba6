"""How EWS calls fail: a 503 with Retry-After (seconds or an HTTP-date) waits as long as the
server asked (docs/supervision.md, Outages), for reading and for sending, capped at
MAX_RETRY_AFTER; against the fake Exchange over real HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest

from tests.configs import ROOM, ews_config
from tests.fakes.ews_server import FakeExchange
from tests.fakes.threaded import ThreadedServer
from tests.mailbox.test_ews import _reply_to, meeting
from vmrsched.mailbox.backends import make_gateway
from vmrsched.mailbox.base import MAX_RETRY_AFTER, GatewayError, retry_after_seconds
from vmrsched.telemetry import Metrics


@pytest.fixture
def ews(tmp_path: Path) -> Iterator[tuple[FakeExchange, Any]]:
    fake = FakeExchange()
    server = ThreadedServer(fake.app()).start()
    cfg = ews_config(tmp_path, server.url)
    gateway = make_gateway(cfg.integrations[0], cfg.data_dir, Metrics())
    try:
        yield fake, gateway
    finally:
        gateway.close()
        server.stop()


def test_a_503_retry_after_in_seconds_is_the_wait_for_reading(
    ews: tuple[FakeExchange, Any],
) -> None:
    fake, gateway = ews
    gateway.fetch(10)  # signed in and subscribed
    fake.retry_after = "8"
    fake.fail_next.append("503")
    with pytest.raises(GatewayError) as raised:
        gateway.fetch(10)
    assert raised.value.retry_after == 8 and raised.value.whole_mailbox
    assert "Retry-After: 8 s" in str(raised.value)


def test_a_503_retry_after_as_a_date_is_the_wait_for_sending(
    ews: tuple[FakeExchange, Any],
) -> None:
    fake, gateway = ews
    item = fake.deliver(ROOM, meeting("busy", "<p>x</p>"))
    gateway.fetch(10)
    fake.retry_after = formatdate(time.time() + 20, usegmt=True)
    fake.fail_next.append("503")
    with pytest.raises(GatewayError) as raised:
        gateway.send_many([_reply_to(item)])
    assert raised.value.retry_after is not None and 17 <= raised.value.retry_after <= 20
    assert not fake.replies(ROOM)  # nothing went out; the notifier waits and tries again


def test_a_503_without_retry_after_leaves_the_wait_to_the_backoff(
    ews: tuple[FakeExchange, Any],
) -> None:
    fake, gateway = ews
    gateway.fetch(10)
    fake.fail_next.append("503")
    with pytest.raises(GatewayError) as raised:
        gateway.fetch(10)
    assert raised.value.retry_after is None


def test_retry_after_values() -> None:
    assert retry_after_seconds("6") == 6
    assert retry_after_seconds("86400") == MAX_RETRY_AFTER  # capped
    assert retry_after_seconds("") is None and retry_after_seconds("soon") is None
    assert retry_after_seconds("0") is None
    assert retry_after_seconds(formatdate(time.time() - 60, usegmt=True)) is None  # past
