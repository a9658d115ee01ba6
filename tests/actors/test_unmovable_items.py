"""An item the service decided and answered, but whose file the spool cannot move out of
inbox/ (processed/ or failed/ made immutable or read-only: EPERM, EACCES), is decided, counted
and logged once: only its move is tried again, on the mailbox's backoff. While it waits, the
alarm mailbox_unreachable stays raised, naming the file and the refusal, and the mailbox lag
counts the file's age, so the Prometheus alerts on both can fire; the first move that works
ends both.

Run through the real poller on a real spool: the folder is made immutable with chattr +i as
root (chmod 555 otherwise), or, where the file system has no immutable flag, every rename into
it fails as the kernel's would, with PermissionError(EPERM)."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import spoolkit
from tests.configs import spool_config
from vmrsched import service
from vmrsched.actors.supervision import RestartPolicy
from vmrsched.mailbox import spool_inbox
from vmrsched.store import decisions
from vmrsched.telemetry import MAILBOX_UNREACHABLE

WATCHED = 2.0  # seconds the held file is watched: some 40 polls, several tries of its move


@contextlib.contextmanager
def unmovable(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Nothing can be moved into `folder` while this lasts."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0:
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        return
    replace = os.replace

    def refusing(source: Any, target: Any, **kwargs: Any) -> None:
        if Path(target).parent == folder:
            raise PermissionError(errno.EPERM, os.strerror(errno.EPERM), str(target))
        replace(source, target, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(spool_inbox.os, "replace", refusing)
        yield


def counted(svc: service.Service) -> float:
    """vmrsched_meeting_requests_total of alpha, every outcome and reason together."""
    total = 0.0
    for family in svc.ctx.metrics.registry.collect():
        if family.name == "vmrsched_meeting_requests":
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.labels["integration"] == "alpha":
                    total += sample.value
    return total


def lag(svc: service.Service) -> float:
    value = svc.ctx.metrics.registry.get_sample_value(
        "vmrsched_mailbox_lag_seconds", {"integration": "alpha"}
    )
    return value or 0.0


def alarm(svc: service.Service) -> str | None:
    found = [a.message for a in svc.ctx.alarms.active("alpha") if a.name == MAILBOX_UNREACHABLE]
    return found[0] if found else None


def logged(svc: service.Service, item: str) -> list[dict[str, Any]]:
    path = decisions.log_path(svc.config.data_dir, "alpha")
    return [entry for entry in decisions.read(path) if entry["item"] == item]


@pytest.fixture
def svc(tmp_path: Path) -> Iterator[service.Service]:
    running = service.start(spool_config(tmp_path), policy=RestartPolicy(mailbox_max=0.4))
    try:
        spoolkit.wait_for(lambda: running.ctx.status.state("alpha") == "running")
        yield running
    finally:
        running.stop()


@pytest.mark.parametrize(
    ("folder", "garbage"),
    [("processed", False), ("failed", True)],
    ids=["answered-request", "unreadable-item"],
)
def test_an_item_that_cannot_leave_the_inbox_is_decided_once_and_held_in_the_alarm(
    svc: service.Service, monkeypatch: pytest.MonkeyPatch, folder: str, garbage: bool
) -> None:
    spool = svc.config.integrations[0].spool_dir(svc.config.data_dir)
    data, uid = spoolkit.request()
    with unmovable(spool / folder, monkeypatch):
        name = spoolkit.drop(spool / "inbox", b"not a calendar" if garbage else data)
        spoolkit.wait_for(lambda: alarm(svc) is not None)
        started = time.monotonic()
        while time.monotonic() - started < WATCHED:
            message = alarm(svc)
            assert message is not None, "the alarm was cleared while the file waits"
            time.sleep(0.01)
        assert name in message and ("not permitted" in message or "denied" in message)
        assert (spool / "inbox" / name).exists()
        assert len(logged(svc, name)) == 1
        assert counted(svc) == 1.0
        assert lag(svc) >= WATCHED
        if not garbage:
            assert len(spoolkit.answers_for(spool, uid)) == 1

    spoolkit.wait_handled(spool, name)
    assert (spool / folder / name).exists()
    spoolkit.wait_for(lambda: alarm(svc) is None)
    spoolkit.wait_for(lambda: lag(svc) == 0.0)
    assert len(logged(svc, name)) == 1 and counted(svc) == 1.0
    if not garbage:
        assert len(spoolkit.answers_for(spool, uid)) == 1
    assert svc.ctx.status.state("alpha") == "running"


def test_items_behind_a_held_one_are_decided_and_moved_as_they_come(
    svc: service.Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the held file waits: one unreadable item kept out of failed/ holds up nothing
    that goes to processed/."""
    spool = svc.config.integrations[0].spool_dir(svc.config.data_dir)
    with unmovable(spool / "failed", monkeypatch):
        held = spoolkit.drop(spool / "inbox", b"not a calendar")
        spoolkit.wait_for(lambda: alarm(svc) is not None)
        data, uid = spoolkit.request()
        later = spoolkit.drop(spool / "inbox", data)
        spoolkit.wait_handled(spool, later)
        assert len(spoolkit.answers_for(spool, uid)) == 1
        assert (spool / "processed" / later).exists()
        assert (spool / "inbox" / held).exists() and alarm(svc) is not None
    spoolkit.wait_handled(spool, held)
    spoolkit.wait_for(lambda: alarm(svc) is None)
    assert counted(svc) == 2.0
