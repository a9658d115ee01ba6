"""The decisions log on a full disk: the poller goes on answering (the answer is what the
organizer waits for), decides and counts each request once, says once which decisions the log
did not take (their correlation ids), and writes the log again once there is room, with no
restart of the poller or the integration.

The log's folder is a small tmpfs filled for the test (root only; CI runs as root): the store,
the out-queue and the spool keep their room, so what fills is the decisions log alone."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import spoolkit
from tests.configs import spool_config
from tests.test_storage_full import fill, small_file_system
from vmrsched import service
from vmrsched.store import decisions


@pytest.fixture
def svc(tmp_path: Path) -> Iterator[service.Service]:
    cfg = spool_config(tmp_path)
    cfg.data_dir.mkdir(parents=True)
    with small_file_system(cfg.data_dir / "decisions", "64k"):
        running = service.start(cfg)
        try:
            spoolkit.wait_for(lambda: running.ctx.status.state("alpha") == "running")
            yield running
        finally:
            running.stop()


def restarts(svc: service.Service) -> float:
    value = svc.ctx.metrics.registry.get_sample_value(
        "vmrsched_actor_restarts_total", {"integration": "alpha", "actor": "poller"}
    )
    return value or 0.0


def counted(svc: service.Service) -> float:
    total = 0.0
    for family in svc.ctx.metrics.registry.collect():
        if family.name == "vmrsched_meeting_requests":
            total += sum(s.value for s in family.samples if s.name.endswith("_total"))
    return total


def answer(svc: service.Service, spool: Path) -> tuple[str, str]:
    """Drop a request and wait for its one answer: (item, correlation id)."""
    data, uid = spoolkit.request()
    name = spoolkit.drop(spool / "inbox", data)
    spoolkit.wait_handled(spool, name)
    spoolkit.wait_for(lambda: bool(spoolkit.answers_for(spool, uid)))
    [mail] = spoolkit.answers_for(spool, uid)
    return name, mail.headers["X-Vmrsched-Correlation-Id"]


def test_a_full_disk_under_the_decisions_log_costs_log_lines_never_answers(
    svc: service.Service, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="vmrsched.store.decisions")
    spool = svc.config.integrations[0].spool_dir(svc.config.data_dir)
    log_path = decisions.log_path(svc.config.data_dir, "alpha")
    filler = fill(log_path.parent)  # before the log's first line: no page of it has room

    during, correlation_id = answer(svc, spool)
    time.sleep(1.0)  # some 20 polls on the full disk
    assert counted(svc) == 1.0  # decided and counted once
    refusals = [r for r in caplog.records if "did not take" in r.getMessage()]
    assert len(refusals) == 1 and correlation_id in refusals[0].getMessage()

    filler.unlink()
    after, _ = answer(svc, spool)
    items = [entry["item"] for entry in decisions.read(log_path)]
    assert items[0] == after and items.count(during) <= 1
    assert counted(svc) == 2.0
    assert restarts(svc) == 0.0
    assert svc.ctx.status.state("alpha") == "running"
    assert any("takes decisions again" in r.getMessage() for r in caplog.records)
