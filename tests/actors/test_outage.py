"""The Outage helper (actors/outage.py) the poller, the notifier and the provisioner share:
the alarm from the threshold on, delays on the capped exponential backoff (exact without
jitter, within the jitter's share below it with), the server's Retry-After (up to the longest
wait), and one "recovered after N s" line when it is over."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from vmrsched.actors.outage import Outage
from vmrsched.actors.supervision import Backoff
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
