"""The hourly sweep and a wrong clock: a wall clock that jumped ahead (40 days, say) must not
expire next week's reservations or archive next week's meetings, which the correct clock still
needs. The sweep runs only when the wall clock moved forward by no more than the time that
really passed (the boot-time clock, which setting the time does not move) plus a margin; it
says so in the log when it refuses. The wall clock is injected; the boot-time one is real (a
test takes seconds) or injected where days must really pass."""

from __future__ import annotations

import logging
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests import spoolkit
from tests.configs import spool_config
from vmrsched import service
from vmrsched.actors import allocator
from vmrsched.actors.messages import Sweep
from vmrsched.rules.meetings import Action
from vmrsched.rules.recurrence import Schedule
from vmrsched.store import Store

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


def booked(store_dir: Path) -> tuple[str, str]:
    """A reservation made now (expires in 30 days) and a meeting next week: their alias ids."""
    store = Store(store_dir, clock=lambda: NOW, rng=random.Random(5))
    reserved = store.reserve("vmr", 6, "vc.example.com")
    meeting = store.reserve("vmr", 6, "vc.example.com")
    start = NOW + timedelta(days=7)
    store.apply(
        Action(
            "bind",
            alias_id=meeting["alias_id"],
            meeting_uid="next-week",
            schedule=Schedule(start, start + timedelta(hours=1)),
        ),
        {"name": "Planning"},
    )
    store.commit()
    store.close()
    return reserved["alias_id"], meeting["alias_id"]


def sweep(svc: service.Service) -> None:
    svc.ctx.registry.get("alpha", "allocator").ask(Sweep(), timeout=30)


def statuses(store_dir: Path, ids: tuple[str, str]) -> list[str | None]:
    store = Store(store_dir, clock=lambda: NOW)
    try:
        return [(store.get(i) or {}).get("status") for i in ids]
    finally:
        store.close(compact=False)


def test_a_clock_40_days_ahead_sweeps_nothing_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = spool_config(tmp_path)
    store_dir = cfg.data_dir / "store" / "alpha"
    ids = booked(store_dir)
    clock = Clock()
    svc = service.start(cfg, clock=clock)
    try:
        spoolkit.wait_for(lambda: svc.ctx.status.state("alpha") == "running")
        clock.now = NOW + timedelta(days=40)
        with caplog.at_level(logging.WARNING, "vmrsched"):
            sweep(svc)
            sweep(svc)  # still ahead an hour later: still nothing
        clock.now = NOW + timedelta(hours=1)  # the clock is put right
        sweep(svc)
    finally:
        svc.stop()
    assert statuses(store_dir, ids) == ["reserved", "bound"]
    refused = [r.getMessage() for r in caplog.records if "sweep" in r.getMessage()]
    assert len(refused) == 2 and "40 days" in refused[0] and "not sweeping" in refused[0]


def test_time_that_really_passed_is_swept_as_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = spool_config(tmp_path)
    store_dir = cfg.data_dir / "store" / "alpha"
    ids = booked(store_dir)
    clock = Clock()
    uptime = [1000.0]
    monkeypatch.setattr(allocator, "uptime", lambda: uptime[0])
    svc = service.start(cfg, clock=clock)
    try:
        spoolkit.wait_for(lambda: svc.ctx.status.state("alpha") == "running")
        clock.now = NOW + timedelta(days=40)
        uptime[0] += timedelta(days=40).total_seconds()  # the days really passed
        sweep(svc)
    finally:
        svc.stop()
    assert statuses(store_dir, ids) == [None, None]  # expired, finished: archived
