"""`vmrsched recover` on the spool backend: accepted meetings (the spool's resource calendar)
that the store no longer knows get a new alias and an organizer update in the outbox."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests import spoolkit
from tests.backups import restore_without
from tests.configs import Running, spool_config, spool_toml
from vmrsched import alias_admin, recovery, service
from vmrsched.mailbox.spool import SpoolMailbox
from vmrsched.messages import answers
from vmrsched.store import Record, Store

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def accepted_then_lost(cfg: Any, **request: Any) -> tuple[str, Record]:
    """A meeting booked offline (a placeholder) accepted by the service, then its record lost
    from the store: (its UID, the lost record)."""
    spool = cfg.integrations[0].spool_dir(cfg.data_dir)
    svc = service.start(cfg)
    try:
        data, uid = spoolkit.request(
            body="<p>TOK:-00000000-0000-4000-8000-00000000beef#</p>", **request
        )
        name = spoolkit.drop(spool / "inbox", data)
        spoolkit.wait_handled(spool, name)
        spoolkit.wait_for(lambda: len(spoolkit.answers_for(spool, uid)) == 2)
    finally:
        svc.stop()
    return uid, restore_without(cfg.data_dir / "store" / "alpha", uid)


def test_recover_on_the_spool(tmp_path: Path) -> None:
    cfg = spool_config(tmp_path)
    spool = cfg.integrations[0].spool_dir(cfg.data_dir)
    uid, lost = accepted_then_lost(cfg, rrule="FREQ=WEEKLY;COUNT=3")

    config_file = tmp_path / "vmrsched.toml"
    config_file.write_text(spool_toml(cfg.data_dir, name="alpha"))
    holder = Store(cfg.data_dir / "store" / "alpha")  # as if the service were running
    busy = subprocess.run(
        [sys.executable, "-m", "vmrsched", "recover", "alpha", "--config", str(config_file)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    holder.close()
    assert busy.returncode == 1 and "stop the service first" in busy.stderr

    out = subprocess.run(
        [sys.executable, "-m", "vmrsched", "recover", "alpha", "--config", str(config_file)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    assert f"bound         {uid}" in out.stdout and "alpha: 1 bound" in out.stdout
    store = Store(cfg.data_dir / "store" / "alpha")
    rebound = store.by_meeting_uid(uid)
    assert rebound is not None and rebound["alias_id"] != lost["alias_id"]
    store.close()
    updates = [m for m in spoolkit.answers_for(spool, uid) if m.outcome == "updated"]
    assert len(updates) == 2  # the original placeholder update and the recovery update
    assert any(rebound["alias_id"] in m.html for m in updates)


def test_recover_leaves_alone_a_meeting_whose_alias_an_admin_deleted(tmp_path: Path) -> None:
    """Deleting an alias means it is declined from then on (docs/administration.md); recovery
    gives a new alias only to meetings the store has lost, not to one it knows as deleted,
    whether still among its records or archived."""
    cfg = spool_config(tmp_path)
    integ = cfg.integrations[0]
    spool = integ.spool_dir(cfg.data_dir)
    svc = service.start(cfg)
    try:
        running = Running(svc, cfg)
        data, uid = spoolkit.request(body=f"<p>PXPS:-{running.reserve()['alias_id']}#</p>")
        running.send(data)
    finally:
        svc.stop()
    answered = len(spoolkit.answers_for(spool, uid))
    store = Store(cfg.data_dir / "store" / "alpha")
    try:
        booked = store.by_meeting_uid(uid)
        assert booked is not None
        now = datetime.now(UTC)
        assert alias_admin.delete(store, integ, integ.renderer(), booked["alias"], "admin", now)
        store.commit()
        for archived in (False, True):
            if archived:
                assert store.sweep() == 1  # the deleted alias moves to the archive
            gateway = SpoolMailbox(spool, "alpha", integ.timezone)
            done = recovery.recover(integ, gateway, store, datetime.now(UTC))
            gateway.close()
            assert [(d.uid, d.action) for d in done] == [(uid, "known")]
            assert store.by_meeting_uid(uid) is None
    finally:
        store.close()
    assert len(spoolkit.answers_for(spool, uid)) == answered  # no organizer update sent


def test_recover_a_pxps_booking_on_the_spool(tmp_path: Path) -> None:
    """The update holds only the new instructions, and the update coming back to the room (as
    Exchange would deliver it) gets no reply."""
    cfg = spool_config(tmp_path)
    integ = cfg.integrations[0]
    spool = integ.spool_dir(cfg.data_dir)
    renderer = integ.renderer()
    svc = service.start(cfg)
    try:
        running = Running(svc, cfg)
        old = running.reserve()
        pasted = renderer.render(
            "single_use_joining_instructions_template", answers.variables(integ, None, old)
        )
        data, uid = spoolkit.request(body=f"<p>Agenda</p>{pasted}")
        running.send(data)
    finally:
        svc.stop()
    restore_without(cfg.data_dir / "store" / "alpha", uid)
    store = Store(cfg.data_dir / "store" / "alpha")
    gateway = SpoolMailbox(spool, "alpha", integ.timezone)
    done = recovery.recover(integ, gateway, store, datetime.now(UTC))
    gateway.close()
    store.close()
    assert [d.action for d in done] == ["bound"]
    [update] = [m for m in spoolkit.answers_for(spool, uid) if m.outcome == "updated"]
    for value in (old["alias"], old["numeric_alias"], old["alias_id"]):
        assert value not in update.html
    assert update.html.count("PXPS:-") == 1 and update.html.startswith("<p>Agenda</p>")

    svc = service.start(cfg)
    try:
        running = Running(svc, cfg)
        # the update delivered to the room as well
        name = spoolkit.drop(spool / "inbox", update.path.read_bytes(), suffix=".eml")
        spoolkit.wait_handled(spool, name)
        running.settle()
        assert (spool / "processed" / name).exists()  # read as a meeting, not quarantined
        assert len(spoolkit.answers_for(spool, uid)) == 2  # the accept and the one update
        count = svc.ctx.metrics.registry.get_sample_value(
            "vmrsched_meeting_requests_total",
            {"integration": "alpha", "outcome": "ignored", "reason": "unchanged"},
        )
        assert count == 1
    finally:
        svc.stop()


def test_the_recovery_report_shows_the_conference_subject_not_the_raw_one(tmp_path: Path) -> None:
    """An admin who blanks subjects for privacy (conference subject template) sees the blanked
    subject in the recovery report too."""
    cfg = spool_config(tmp_path, single_use={"conference_subject_template": "Private"})
    integ = cfg.integrations[0]
    spool = integ.spool_dir(cfg.data_dir)
    accepted_then_lost(cfg, subject="Secret merger")
    store = Store(cfg.data_dir / "store" / "alpha")
    gateway = SpoolMailbox(spool, "alpha", integ.timezone)
    done = recovery.recover(integ, gateway, store, datetime.now(UTC), dry_run=True)
    gateway.close()
    store.close()
    assert [(d.action, d.subject) for d in done] == [("would_bind", "Private")]
