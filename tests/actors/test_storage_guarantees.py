"""The running service and its storage: a damaged store stops its integration (store_corrupt,
not ready, files untouched) while the others go on; one service per data directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import spoolkit
from tests.configs import Running, spool_config
from vmrsched import service
from vmrsched.store import Store, StoreInUseError


def test_a_damaged_store_raises_store_corrupt_and_changes_nothing(tmp_path: Path) -> None:
    cfg = spool_config(tmp_path, names=("alpha", "beta"))
    store_dir = cfg.data_dir / "store" / "alpha"
    store = Store(store_dir)
    for _ in range(20):
        store.reserve("v", 8, "d")
        store.commit()
    store.close(compact=False)
    [journal] = store_dir.glob("journal.*.log")
    data = bytearray(journal.read_bytes())
    data[len(data) // 2] ^= 0x04
    journal.write_bytes(bytes(data))
    before = {p.name: p.read_bytes() for p in store_dir.iterdir() if p.is_file()}
    svc = service.start(cfg)
    try:
        spoolkit.wait_for(
            lambda: (
                ("alpha", "store_corrupt")
                in {(a.integration, a.name) for a in svc.ctx.alarms.active()}
            )
        )
        running = Running(svc, cfg)
        # the other integration answers as usual
        beta = cfg.integrations[1].spool_dir(cfg.data_dir)
        name = spoolkit.drop(beta / "inbox", spoolkit.request(body="<p>x</p>")[0])
        spoolkit.wait_handled(beta, name)
        assert running.svc.ctx.status.state("beta") == "running"
    finally:
        svc.stop()
    after = {p.name: p.read_bytes() for p in store_dir.iterdir() if p.is_file()}
    assert after == before  # nothing dropped, compacted or rewritten


def test_one_service_per_data_directory(tmp_path: Path) -> None:
    cfg = spool_config(tmp_path)
    svc = service.start(cfg)
    try:
        for lock in cfg.data_dir.rglob("lock"):
            lock.unlink()  # no file whose existence counts
        with pytest.raises(StoreInUseError, match="data directory"):
            service.start(cfg)
        spoolkit.wait_for(lambda: svc.ctx.status.state("alpha") == "running")
        with pytest.raises(StoreInUseError):
            Store(cfg.data_dir / "store" / "alpha")  # recover, repair: refused while it runs
    finally:
        svc.stop()
    service.start(cfg).stop()  # released with the service
