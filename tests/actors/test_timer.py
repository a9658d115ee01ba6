"""The service's one timer thread: it sleeps until the earliest deadline and is woken only when
a new entry comes before every waiting one."""

from __future__ import annotations

import threading
import time

from vmrsched.actors.timer import Scheduler


def test_an_earlier_entry_wakes_the_sleeping_timer() -> None:
    scheduler = Scheduler()
    fired = threading.Event()
    try:
        scheduler.call_later(3600, lambda: None)  # the timer now sleeps for an hour
        time.sleep(0.05)
        started = time.monotonic()
        scheduler.call_later(0.01, fired.set)
        assert fired.wait(5)
        assert time.monotonic() - started < 2
    finally:
        scheduler.stop()


def test_later_entries_leave_the_earliest_on_time_and_all_fire_in_order() -> None:
    scheduler = Scheduler()
    order: list[int] = []
    done = threading.Event()
    try:
        scheduler.call_later(0.05, lambda: order.append(1))
        for i in range(2, 50):  # none of these comes first: the timer is not woken for them
            scheduler.call_later(0.05 + i / 1000, lambda i=i: order.append(i))
        scheduler.call_later(0.2, done.set)
        assert done.wait(5)
        assert order == list(range(1, 50))
    finally:
        scheduler.stop()


def test_a_failing_callback_does_not_stop_the_timer() -> None:
    scheduler = Scheduler()
    fired = threading.Event()

    def broken() -> None:
        raise RuntimeError("boom")

    try:
        scheduler.call_later(0.01, broken)
        scheduler.call_later(0.02, fired.set)
        assert fired.wait(5)
    finally:
        scheduler.stop()
