"""A service on the shared database, in one process: it says it is not ready while it cannot
reach the database (it runs nothing then), and is ready again once the database answers; a
service started while the database is down refuses with one clear error."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests import spoolkit
from tests.pgcluster import Cluster
from tests.sharedkit import one_integration
from vmrsched import service
from vmrsched.errors import Unavailable
from vmrsched.telemetry import INTEGRATION_FAILED, STORAGE_UNAVAILABLE


def test_cut_off_from_the_database_it_is_not_ready_and_recovers(
    tmp_path: Path, dsn: str, cluster: Cluster
) -> None:
    svc = service.start(one_integration(tmp_path, dsn))
    try:
        spoolkit.wait_for(lambda: svc.readiness()[0])
        assert svc.readiness()[1]["owned"] == ["alpha"]
        # what this instance says about alpha while it runs it (say, its mailbox is down)
        svc.ctx.alarms.raise_("alpha", INTEGRATION_FAILED, "as it failed here")
        cluster.stop()
        try:
            spoolkit.wait_for(lambda: not svc.readiness()[0], timeout=5)
            spoolkit.wait_for(lambda: svc.readiness()[1]["owned"] == [], timeout=5)
            time.sleep(1.0)  # leases given up: the outage still shows, alpha's alarms do not
            alarms = {(a.integration, a.name) for a in svc.ctx.alarms.active()}
            assert alarms == {("service", STORAGE_UNAVAILABLE)}
        finally:
            cluster.start()
        spoolkit.wait_for(lambda: svc.readiness()[0], timeout=15)
        assert svc.ctx.status.state("alpha") == "running"
        assert not svc.ctx.alarms.active()
    finally:
        svc.stop()


def test_a_service_started_while_the_database_is_down_refuses_clearly(
    tmp_path: Path, dsn: str, cluster: Cluster
) -> None:
    cluster.stop()
    try:
        with pytest.raises(Unavailable, match="the database did not answer"):
            service.start(one_integration(tmp_path, dsn))
    finally:
        cluster.start()
