"""How EWS calls fail: a 503 with Retry-After (seconds or an HTTP-date) waits as long as the
server asked (docs/supervision.md, Outages), for reading and for sending, capped at
MAX_RETRY_AFTER; a response Exchange refuses in its own ResponseMessage is that message's
outcome, never the lot's; a refused request version is an outage. Against the fake Exchange
over real HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest
from exchangelib.errors import (
    ErrorIncorrectSchemaVersion,
    ErrorInvalidSchemaVersionForMailboxVersion,
    ErrorInvalidServerVersion,
)

from tests.configs import ROOM, ews_config
from tests.fakes.ews_server import FakeExchange
from tests.fakes.threaded import ThreadedServer
from tests.mailbox.test_ews import _reply_to, meeting
from vmrsched.mailbox.backends import make_gateway
from vmrsched.mailbox.base import MAX_RETRY_AFTER, GatewayError, retry_after_seconds
from vmrsched.mailbox.ews_calls import translate
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


@pytest.mark.parametrize("immutable_ids", [False, True])
def test_a_response_exchange_refuses_is_that_messages_outcome_and_the_others_stand(
    ews: tuple[FakeExchange, Any], immutable_ids: bool
) -> None:
    """One CreateItem answers three requests; Exchange carries out the first and the last
    and refuses the middle one in its own ResponseMessage (ResponseClass Error, ResponseCode
    ErrorInvalidRequest), which exchangelib raises for the whole request. Each message gets
    its own outcome from that one answer: nothing is sent a second time (which, with
    immutable ids, would answer an organizer twice), and the refusal is that message's,
    for good."""
    fake, gateway = ews
    fake.immutable_ids = immutable_ids
    items = [fake.deliver(ROOM, meeting(f"lot-{n}", "<p>x</p>")) for n in range(3)]
    fake.refuse_responses[items[1].id] = "ErrorInvalidRequest"
    gateway.fetch(10)
    before = fake.requests.count("CreateItem")
    first, refused, last = gateway.send_many([_reply_to(item) for item in items])
    assert first is None and last is None
    assert isinstance(refused, GatewayError) and refused.permanent
    assert refused.code == "ErrorInvalidRequest" and not refused.whole_mailbox
    assert fake.requests.count("CreateItem") - before == 1
    answered = sorted(r.meeting.uid for r in fake.replies(ROOM) if r.meeting)
    assert answered == ["lot-0", "lot-2"]


def test_a_lot_of_one_refused_by_exchange_is_that_messages_outcome_not_raised(
    ews: tuple[FakeExchange, Any],
) -> None:
    """send_many raises only for the lot as a whole (mailbox/base.py): a lot of one whose
    response Exchange refuses gets the refusal as its outcome, as a lot of many would."""
    fake, gateway = ews
    item = fake.deliver(ROOM, meeting("alone", "<p>x</p>"))
    fake.refuse_responses[item.id] = "ErrorInvalidRequest"
    gateway.fetch(10)
    [outcome] = gateway.send_many([_reply_to(item)])
    assert isinstance(outcome, GatewayError) and outcome.permanent
    assert outcome.code == "ErrorInvalidRequest"
    assert not fake.replies(ROOM)


@pytest.mark.parametrize(
    "error",
    [
        ErrorInvalidServerVersion,
        ErrorIncorrectSchemaVersion,
        ErrorInvalidSchemaVersionForMailboxVersion,
    ],
)
def test_a_refused_request_version_is_an_outage_not_one_messages_refusal(
    error: type[Exception],
) -> None:
    """The version codes say the server takes no request of the version we speak (exchangelib
    raises one of them once every version it tried was refused): the whole mailbox waits,
    no message is failed for it."""
    translated = translate(error("Tried versions ('Exchange2013_SP1',) but all were invalid"))
    assert translated.whole_mailbox and not translated.permanent
    assert error.__name__ in str(translated)
