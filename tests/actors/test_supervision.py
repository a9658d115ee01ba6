"""Supervision: a crashed poller is restarted and loses nothing; a crash storm marks only its
own integration failed (with an alarm) while the others keep answering; failed integrations are
retried and recover."""

from __future__ import annotations

import threading
from pathlib import Path

from tests import spoolkit
from tests.configs import spool_config
from vmrsched import service
from vmrsched.actors.context import Context
from vmrsched.actors.supervision import Backoff, RestartIntensity, RestartPolicy
from vmrsched.config import IntegrationConfig
from vmrsched.mailbox.spool import SpoolMailbox


class CrashingSpool(SpoolMailbox):
    """The real spool, except that fetch raises a programming error (not a GatewayError) while
    `crashes` is positive: the kind of bug that kills an actor."""

    def __init__(self, *args: object, plan: dict[str, int], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.plan = plan
        self.lock = threading.Lock()

    def fetch(self, limit: int):  # type: ignore[no-untyped-def]
        with self.lock:
            if self.plan.get(self.name, 0) != 0:
                self.plan[self.name] -= 1
                raise RuntimeError(f"injected crash in {self.name}")
        return super().fetch(limit)


def factory(plan: dict[str, int]):  # type: ignore[no-untyped-def]
    def make(integ: IntegrationConfig, ctx: Context) -> SpoolMailbox:
        return CrashingSpool(integ.spool_dir(ctx.data_dir), integ.name, integ.timezone, plan=plan)

    return make


def test_restart_intensity_window() -> None:
    now = [0.0]
    intensity = RestartIntensity(
        RestartPolicy(max_restarts=5, within_seconds=60), clock=lambda: now[0]
    )
    for _ in range(5):
        assert not intensity.record()
        now[0] += 1
    assert intensity.record()  # the sixth within 60 s
    now[0] += 120
    assert not intensity.record()  # the old ones left the window
    assert intensity.next_backoff() < intensity.next_backoff()


def test_crashed_poller_is_restarted_and_loses_no_item(tmp_path: Path) -> None:
    cfg = spool_config(tmp_path)
    plan = {"alpha": 0}
    svc = service.start(cfg, gateway_factory=factory(plan))
    try:
        spool = cfg.integrations[0].spool_dir(cfg.data_dir)
        spoolkit.wait_for(
            lambda: svc.ctx.status.snapshot().get("alpha", {}).get("state") == "running"
        )
        plan["alpha"] = 3  # three crashes in a row, within the intensity
        names = [spoolkit.drop(spool / "inbox", spoolkit.request(body="x")[0]) for _ in range(5)]
        for name in names:
            spoolkit.wait_handled(spool, name)
        state = svc.ctx.status.snapshot()["alpha"]
        assert state["state"] == "running" and state["restarts"] == 3
        restarts = svc.ctx.metrics.registry.get_sample_value(
            "vmrsched_actor_restarts_total", {"integration": "alpha", "actor": "poller"}
        )
        assert restarts == 3.0
        assert {p.name for p in (spool / "processed").iterdir()} == set(names)
    finally:
        svc.stop()


def test_crash_storm_fails_one_integration_only_and_it_recovers(tmp_path: Path) -> None:
    cfg = spool_config(tmp_path, names=("alpha", "beta"))
    plan = {"alpha": -1, "beta": 0}  # alpha crashes on every poll
    policy = RestartPolicy(
        max_restarts=5,
        within_seconds=60,
        restart_delay=0.01,
        integration=Backoff(0.5, 300.0),
    )
    svc = service.start(cfg, gateway_factory=factory(plan), policy=policy)
    try:
        spoolkit.wait_for(
            lambda: svc.ctx.status.snapshot().get("alpha", {}).get("state") == "failed"
        )
        alarms = {(a.integration, a.name) for a in svc.ctx.alarms.active()}
        assert ("alpha", "integration_failed") in alarms
        registry = svc.ctx.metrics.registry
        assert (
            registry.get_sample_value(
                "vmrsched_alarm_active", {"integration": "alpha", "alarm": "integration_failed"}
            )
            == 1.0
        )
        assert registry.get_sample_value("vmrsched_integration_up", {"integration": "alpha"}) == 0.0
        # beta keeps answering
        beta = cfg.integrations[1].spool_dir(cfg.data_dir)
        data, uid = spoolkit.request(body="none")
        name = spoolkit.drop(beta / "inbox", data)
        spoolkit.wait_handled(beta, name)
        spoolkit.wait_for(lambda: bool(spoolkit.answers_for(beta, uid)))
        assert svc.ctx.status.snapshot()["beta"]["state"] == "running"
        # the fault goes away: the backoff retry brings alpha back and it answers its backlog
        alpha = cfg.integrations[0].spool_dir(cfg.data_dir)
        data, uid = spoolkit.request(body="none")
        spoolkit.drop(alpha / "inbox", data)
        plan["alpha"] = 0
        spoolkit.wait_for(
            lambda: svc.ctx.status.snapshot()["alpha"]["state"] == "running", timeout=20
        )
        spoolkit.wait_for(lambda: bool(spoolkit.answers_for(alpha, uid)))
        assert ("alpha", "integration_failed") not in {
            (a.integration, a.name) for a in svc.ctx.alarms.active()
        }
    finally:
        svc.stop()


def test_an_integration_that_cannot_start_is_failed_not_fatal(tmp_path: Path) -> None:
    cfg = spool_config(tmp_path, names=("alpha", "beta"))

    def broken(integ: IntegrationConfig, ctx: Context) -> SpoolMailbox:
        if integ.name == "alpha":
            raise OSError("mailbox directory on a dead disk")
        return SpoolMailbox(integ.spool_dir(ctx.data_dir), integ.name)

    svc = service.start(cfg, gateway_factory=broken)
    try:
        spoolkit.wait_for(
            lambda: svc.ctx.status.snapshot().get("alpha", {}).get("state") == "failed"
        )
        spoolkit.wait_for(
            lambda: svc.ctx.status.snapshot().get("beta", {}).get("state") == "running"
        )
        assert "dead disk" in svc.ctx.status.snapshot()["alpha"]["error"]
    finally:
        svc.stop()


def test_a_store_that_cannot_be_opened_is_named_in_the_alarm(tmp_path: Path) -> None:
    """An allocator that dies opening its store over and over (here a file stands where the
    store's directory belongs; in the field, a directory made immutable or owned by another
    user): the integration_failed alarm names the path the OS refused, which the exception's
    repr leaves out."""
    cfg = spool_config(tmp_path)
    blocked = cfg.data_dir / "store" / "alpha"
    blocked.parent.mkdir(parents=True)
    blocked.write_text("not a directory")
    policy = RestartPolicy(
        max_restarts=2, within_seconds=60, restart_delay=0.01, integration=Backoff(30.0, 300.0)
    )
    svc = service.start(cfg, policy=policy)
    try:
        spoolkit.wait_for(
            lambda: svc.ctx.status.snapshot().get("alpha", {}).get("state") == "failed"
        )
        [alarm] = [a for a in svc.ctx.alarms.active("alpha") if a.name == "integration_failed"]
        assert str(blocked) in alarm.message, alarm.message
    finally:
        svc.stop()
