"""The Outage helper (actors/outage.py) the poller, the notifier and the provisioner share:
the alarm from the threshold on, delays on the capped exponential backoff (exact without
jitter, within the jitter's share below it with), the server's Retry-After (up to the longest
wait), and one "recovered after N s" line when it is over."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests import spoolkit
from tests.configs import ews_config
from tests.fakes.ews_server import FakeExchange
from tests.fakes.threaded import ThreadedServer
from vmrsched import service
from vmrsched.actors.outage import Outage
from vmrsched.actors.supervision import Backoff, RestartPolicy
from vmrsched.telemetry import Alarms, Metrics


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def names(alarms: Alarms) -> set[str]:
    return {a.name for a in alarms.active("alpha")}


def outage(
    alarms: Alarms,
    clock: Clock,
    threshold: int = 1,
    jitter: float = 0.0,
    rng: Callable[[], float] | None = None,
) -> Outage:
    return Outage(
        alarms,
        "alpha",
        "mailbox_unreachable",
        Backoff(0.5, 60.0),
        "the mailbox",
        threshold=threshold,
        jitter=jitter,
        rng=rng,
        clock=clock,
    )


def test_the_alarm_delays_and_the_recovery(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="vmrsched.outage")
    alarms, clock = Alarms(Metrics()), Clock()
    down = outage(alarms, clock)
    assert not down.down and not down.recovered()  # nothing to recover from
    delays = [down.failed("no answer") for _ in range(10)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    assert down.down and down.failures == 10
    assert names(alarms) == {"mailbox_unreachable"}
    assert down.failed("throttled", retry_after=7.0) == 7.0  # the server's word
    # ... up to the longest wait: one `Retry-After: 3600` must not stop the actor for an hour
    assert down.failed("throttled", retry_after=3600.0) == 60.0
    clock.now += 95.0
    assert down.recovered()
    assert not down.down and names(alarms) == set()
    assert not down.recovered()  # once
    lines = [r.getMessage() for r in caplog.records if r.name == "vmrsched.outage"]
    assert lines == ["the mailbox recovered after 95 s (12 failed tries)"]
    assert down.failed("again") == 0.5  # a new outage starts from the start


def test_a_failure_may_name_its_own_alarm() -> None:
    alarms, clock = Alarms(Metrics()), Clock()
    down = outage(alarms, clock)
    down.failed("sign in again", alarm="service_account_sign_in_required")
    assert names(alarms) == {"service_account_sign_in_required"}
    down.recovered()
    assert names(alarms) == set()


def test_below_the_threshold_no_alarm() -> None:
    alarms, clock = Alarms(Metrics()), Clock()
    down = outage(alarms, clock, threshold=3)
    down.failed("one")
    down.failed("two")
    assert names(alarms) == set()
    down.recovered()  # a blip: nothing to clear
    down.failed("one")
    down.failed("two")
    down.failed("three")
    assert names(alarms) == {"mailbox_unreachable"}


def test_jitter_takes_up_to_its_share_off_the_backoff() -> None:
    draws = iter([0.0, 0.5, 0.999])
    down = outage(Alarms(Metrics()), Clock(), jitter=0.2, rng=lambda: next(draws))
    assert down.failed("x") == 0.5
    assert down.failed("x") == pytest.approx(1.0 * (1 - 0.2 * 0.5))
    assert 2.0 * 0.8 < down.failed("x") < 2.0
    with pytest.raises(ValueError):
        outage(Alarms(Metrics()), Clock(), jitter=0.2)


def test_a_longer_retry_after_cap_waits_what_the_server_named_up_to_it() -> None:
    """The mailbox actors' cap: Exchange and Graph ask to be left alone for what they name."""
    alarms = Alarms(Metrics())
    down = Outage(
        alarms,
        "alpha",
        "exchange_unreachable",
        Backoff(0.5, 60.0),
        "the mailbox",
        retry_after_cap=300.0,
    )
    assert down.failed("throttled", retry_after=120.0) == 120.0
    assert down.failed("throttled", retry_after=3600.0) == 300.0
    assert down.failed("no answer") == 2.0  # the backoff itself keeps its own maximum


def test_the_poller_waits_an_exchange_retry_after_longer_than_its_longest_backoff(
    tmp_path: Path,
) -> None:
    """Exchange answers 503 with Retry-After: 3 while the poller's longest backoff is 0.2 s:
    nothing is asked of Exchange for those 3 s (Microsoft: retrying sooner only prolongs the
    throttling), and polling resumes after them."""
    fake = FakeExchange()
    server = ThreadedServer(fake.app()).start()
    svc = service.start(ews_config(tmp_path, server.url), policy=RestartPolicy(mailbox_max=0.2))
    try:
        spoolkit.wait_for(lambda: fake.requests.count("GetEvents") >= 2, timeout=20)
        with fake.lock:
            fake.retry_after = "3"
            fake.fail_next.append("503")
            asked = len(fake.requests)
        spoolkit.wait_for(lambda: len(fake.requests) > asked, timeout=5)  # the refused poll
        refused_at = time.monotonic()
        after = len(fake.requests)
        time.sleep(2.0)
        assert len(fake.requests) == after, fake.requests[after:]
        spoolkit.wait_for(lambda: len(fake.requests) > after, timeout=5)
        assert time.monotonic() - refused_at >= 2.5
    finally:
        svc.stop()
        server.stop()
