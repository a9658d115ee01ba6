"""A full disk (ENOSPC, EDQUOT): a reservation the disk refuses is a 503 JSON error
`storage_full` at once (the pane then takes its placeholder path), nothing of the refused write
stays in memory or on disk, the integration says so (alarm storage_full) until space returns,
and then reservations go on without a restart.

The service test fills a real file system: a small tmpfs, mounted for the test (root only; CI
runs as root). The store test injects ENOSPC at the journal's write, so it runs anywhere."""

from __future__ import annotations

import contextlib
import errno
import os
import random
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests import spoolkit
from tests.configs import spool_config
from tests.needs import unavailable
from vmrsched import service
from vmrsched.http.app import create_app
from vmrsched.store import StorageFullError, Store, journal
from vmrsched.telemetry import STORAGE_FULL

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
API = "/api/addin/v1/alpha/single-use-vmrs"


class Refusing:
    """os.write for the journal that fails with `code` while `full` is set."""

    def __init__(self, code: int = errno.ENOSPC) -> None:
        self.full = False
        self.code = code
        self._write = os.write

    def __call__(self, fd: int, data: Any) -> int:
        if self.full:
            raise OSError(self.code, os.strerror(self.code))
        return self._write(fd, data)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_write_the_disk_refuses_leaves_nothing_behind_and_the_store_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    refusing = Refusing(code)
    monkeypatch.setattr(journal.os, "write", refusing)
    store = Store(tmp_path, clock=lambda: NOW, rng=random.Random(1))
    kept = store.reserve("v", 6, "d", user="olga")
    store.commit()
    [path] = tmp_path.glob("journal.*.log")
    size = path.stat().st_size

    refusing.full = True
    refused = [store.reserve("v", 6, "d", user="olga") for _ in range(3)]
    with pytest.raises(StorageFullError):
        store.commit()
    # as if the refused writes had never been asked for: in memory and on disk
    assert all(store.get(r["alias_id"]) is None for r in refused)
    assert store.open_reservations("olga") == 1 and store.aliases_taken() == 1
    assert not any(r["alias_id"] == kept["alias_id"] for r in store.take_changes()[1:])
    assert path.stat().st_size == size

    refusing.full = False  # space again: the same store goes on, no reopening
    later = store.reserve("v", 6, "d", user="olga")
    store.commit()
    store.close(compact=False)
    again = Store(tmp_path, clock=lambda: NOW)
    assert {r["alias_id"] for r in again.records()} == {kept["alias_id"], later["alias_id"]}
    assert again.open_reservations("olga") == 2
    again.close(compact=False)


# --- a real full file system -------------------------------------------------------------------


@contextlib.contextmanager
def small_file_system(where: Path, size: str = "4m") -> Iterator[Path]:
    if os.geteuid() != 0:
        unavailable("mounting a tmpfs to fill needs root (CI runs as root)")
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        unavailable(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(folder: Path) -> Path:
    """Take every free byte of the file system holding `folder`."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for size in (1 << 20, 65536, 4096, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    return filler


@pytest.fixture
def full_service(tmp_path: Path) -> Iterator[service.Service]:
    with small_file_system(tmp_path / "fs") as fs:
        cfg = spool_config(fs)
        svc = service.start(cfg)
        try:
            spoolkit.wait_for(lambda: svc.ctx.status.state("alpha") == "running")
            yield svc
        finally:
            svc.stop()


@pytest.fixture
async def client(full_service: service.Service) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(create_app(full_service))) as test_client:
        yield test_client


async def first_refusals(client: TestClient[Any, Any], count: int = 3) -> list[Any]:
    """Reserve until the disk refuses (what the journal's last page still holds goes first),
    then `count` more: (status, seconds, body) of each refused one."""
    refused: list[Any] = []
    for _ in range(200):
        started = time.monotonic()
        response = await client.post(API, json={})
        took = time.monotonic() - started
        if response.status == 201:
            assert not refused, "a reservation was answered after the disk refused one"
            continue
        body = await response.json() if response.content_type == "application/json" else None
        refused.append((response.status, took, body))
        if len(refused) > count:
            return refused
    raise AssertionError("the disk never refused a reservation")


async def test_a_full_disk_is_a_503_storage_full_at_once_until_space_returns(
    client: TestClient[Any, Any], full_service: service.Service
) -> None:
    assert (await client.post(API, json={})).status == 201
    filler = fill(full_service.config.data_dir)
    for status, took, body in await first_refusals(client):
        assert (status, body["error"]["code"] if body else None) == (503, "storage_full")
        assert took < 2.0
    alarms = {a.name: a.message for a in full_service.ctx.alarms.active("alpha")}
    assert "full" in alarms[STORAGE_FULL]
    # and says when asking again may work: the allocator's next look for room
    again = await client.post(API, json={})
    assert (again.status, again.headers.get("Retry-After")) == (503, "2")

    filler.unlink()
    spoolkit.wait_for(
        lambda: STORAGE_FULL not in {a.name for a in full_service.ctx.alarms.active("alpha")}
    )
    response = await client.post(API, json={})
    assert response.status == 201
    assert full_service.ctx.status.state("alpha") == "running"  # never restarted


async def test_readyz_says_not_ready_while_the_disk_is_full(
    client: TestClient[Any, Any], full_service: service.Service
) -> None:
    assert (await client.get("/readyz")).status == 200
    filler = fill(full_service.config.data_dir)
    await first_refusals(client, 0)
    assert (await client.get("/readyz")).status == 503
    filler.unlink()
    spoolkit.wait_for(lambda: full_service.readiness()[0])


async def test_a_meeting_that_arrives_while_the_disk_is_full_waits_without_crashing_the_poller(
    client: TestClient[Any, Any], full_service: service.Service
) -> None:
    """The allocator takes the batch back; the poller backs off instead of crashing, and the
    meeting is answered once there is room again."""
    reserved = await (await client.post(API, json={})).json()
    filler = fill(full_service.config.data_dir)
    await first_refusals(client, 0)
    spool = full_service.config.integrations[0].spool_dir(full_service.config.data_dir)
    restarts = full_service.ctx.metrics.registry.get_sample_value(
        "vmrsched_actor_restarts_total", {"integration": "alpha", "actor": "poller"}
    )
    filler.unlink()  # room for the request file itself, then none for the store
    data, uid = spoolkit.request(body=reserved["joining_instructions"])
    spoolkit.drop(spool / "inbox", data)
    filler = fill(full_service.config.data_dir)
    time.sleep(1.0)  # polls while the disk is full
    assert not spoolkit.answers_for(spool, uid)
    filler.unlink()
    spoolkit.wait_for(lambda: bool(spoolkit.answers_for(spool, uid)), timeout=20)
    after = full_service.ctx.metrics.registry.get_sample_value(
        "vmrsched_actor_restarts_total", {"integration": "alpha", "actor": "poller"}
    )
    assert (after or 0) == (restarts or 0)
