"""A closed supervision tree (OTP): a supervisor that dies takes its children with it and is
restarted by its own supervisor; when the root dies nothing runs on unsupervised, readiness says
so, and Service.stop() still ends every actor the service started."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pykka

from tests import spoolkit
from tests.configs import spool_config
from vmrsched import service
from vmrsched.actors.messages import Crash
from vmrsched.actors.registry import ActorUnavailable


def children(svc: service.Service, name: str) -> list[pykka.ActorRef[Any]]:
    refs = []
    for role in ("allocator", "notifier", "poller"):
        with contextlib.suppress(ActorUnavailable):
            refs.append(svc.ctx.registry.get(name, role))
    return refs


def test_a_crashed_integration_supervisor_takes_its_children_and_comes_back(
    tmp_path: Path,
) -> None:
    cfg = spool_config(tmp_path, names=("alpha", "beta"))
    svc = service.start(cfg)
    try:
        spoolkit.wait_for(lambda: svc.ctx.status.state("alpha") == "running")
        old_supervisor = svc.ctx.supervisors["alpha"]
        old_children = children(svc, "alpha")
        assert len(old_children) == 3
        old_supervisor.tell(Crash())
        spoolkit.wait_for(lambda: not old_supervisor.is_alive())
        spoolkit.wait_for(lambda: not any(c.is_alive() for c in old_children))
        spoolkit.wait_for(
            lambda: (
                svc.ctx.status.state("alpha") == "running"
                and svc.ctx.supervisors.get("alpha") not in (None, old_supervisor)
                and len(children(svc, "alpha")) == 3
            )
        )
        spool = cfg.integrations[0].spool_dir(cfg.data_dir)  # and it answers again
        name = spoolkit.drop(spool / "inbox", spoolkit.request(body="<p>x</p>")[0])
        spoolkit.wait_handled(spool, name)
        assert svc.ctx.status.state("beta") == "running"
    finally:
        svc.stop()


def test_when_the_root_dies_nothing_runs_on_and_stop_still_ends_everything(
    tmp_path: Path,
) -> None:
    cfg = spool_config(tmp_path, names=("alpha", "beta"))
    svc = service.start(cfg)
    started: list[pykka.ActorRef[Any]] = []
    try:
        spoolkit.wait_for(
            lambda: all(svc.ctx.status.state(n) == "running" for n in ("alpha", "beta"))
        )
        started = [*svc.ctx.supervisors.values(), *children(svc, "alpha"), *children(svc, "beta")]
        assert len(started) == 8
        svc.supervisor.tell(Crash())
        spoolkit.wait_for(lambda: not svc.supervisor.is_alive())
        spoolkit.wait_for(lambda: not any(ref.is_alive() for ref in started))
        states = {n: svc.ctx.status.state(n) for n in ("alpha", "beta")}
        assert states == {"alpha": "stopped", "beta": "stopped"}  # /readyz: not ready
        assert ("service", "supervisor_failed") in {
            (a.integration, a.name) for a in svc.ctx.alarms.active()
        }
    finally:
        svc.stop()
    assert not any(ref.is_alive() for ref in started)
