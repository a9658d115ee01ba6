"""`vmrsched recover` on the spool backend: accepted meetings (the spool's resource calendar)
that the store no longer knows get a new alias and an organizer update in the outbox."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests import spoolkit
from tests.backups import lose_record, restore_without
from tests.configs import Running, spool_config, spool_toml
from vmrsched import alias_admin, recovery, service
from vmrsched.config import Config
from vmrsched.mailbox.spool import SpoolMailbox
from vmrsched.messages import answers
from vmrsched.store import Record, Store, lock_directory
from vmrsched.store.records import decode_schedule

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


def booked(cfg: Config, **request: Any) -> tuple[str, Record]:
    """A meeting booked with a reserved alias (PXPS token) and accepted: (its UID, its
    record). The service is stopped after."""
    svc = service.start(cfg)
    try:
        running = Running(svc, cfg)
        reserved = running.reserve()
        data, uid = spoolkit.request(body=f"<p>PXPS:-{reserved['alias_id']}#</p>", **request)
        running.send(data)
    finally:
        svc.stop()
    store = Store(cfg.data_dir / "store" / "alpha")
    try:
        record = store.by_meeting_uid(uid)
    finally:
        store.close()
    assert record is not None
    return uid, record


def recover_alpha(cfg: Config, dry_run: bool = False) -> list[recovery.Recovered]:
    return service.recover_integration(
        cfg, cfg.integrations[0], datetime.now(UTC), dry_run, lambda _: None
    )


def test_recover_does_not_undo_an_admins_deletion_whose_record_was_lost(tmp_path: Path) -> None:
    """The audit's case: an admin deletes a booked meeting's alias, then `store repair` loses
    that record (its document was damaged). The decisions log, which no store damage touches,
    says an admin deleted it: recover leaves the meeting alone, binds nothing, mails no one,
    and its dry run says why."""
    cfg = spool_config(tmp_path)
    spool = cfg.integrations[0].spool_dir(cfg.data_dir)
    uid, record = booked(cfg, subject="Deleted on purpose")
    svc = service.start(cfg)
    try:
        Running(svc, cfg).reserve()  # running
        deleted = asyncio.run(svc.admin_delete_alias("alpha", record["alias"], "admin token"))
        assert deleted["status"] == "deleted"
        Running(svc, cfg).settle()
    finally:
        svc.stop()
    answered = len(spoolkit.answers_for(spool, uid))
    lose_record(cfg.data_dir / "store" / "alpha", record["alias_id"])

    [dry] = recover_alpha(cfg, dry_run=True)
    assert (dry.uid, dry.action) == (uid, "skipped")
    assert "deleted by an admin" in dry.detail and record["alias"] in dry.detail
    [done] = recover_alpha(cfg)
    assert (done.uid, done.action) == (uid, "skipped")
    store = Store(cfg.data_dir / "store" / "alpha")
    try:
        assert store.by_meeting_uid(uid) is None
    finally:
        store.close()
    assert len(spoolkit.answers_for(spool, uid)) == answered  # no organizer update

    config = tmp_path / "vmrsched.toml"
    config.write_text(spool_toml(cfg.data_dir, name="alpha"))
    out = subprocess.run(
        [sys.executable, "-m", "vmrsched", "recover", "alpha", "--dry-run", "--config", config],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    assert f"skipped       {uid}" in out.stdout and "deleted by an admin" in out.stdout


def test_recover_leaves_a_meeting_whose_last_answer_was_a_decline(tmp_path: Path) -> None:
    """Deleted without a trace in the decisions log (by a version before deletions were
    logged), then the organizer's update declined alias_deleted, then the record lost: the
    organizer's last answer was a decline, and recovery does not contradict it."""
    cfg = spool_config(tmp_path)
    integ = cfg.integrations[0]
    spool = integ.spool_dir(cfg.data_dir)
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=2)
    uid, record = booked(cfg, start=start)
    store = Store(cfg.data_dir / "store" / "alpha")
    try:
        assert alias_admin.delete(store, integ, integ.renderer(), record["alias"], "x", start)
        store.commit()
    finally:
        store.close()
    svc = service.start(cfg)
    try:
        running = Running(svc, cfg)
        running.reserve()
        data, _ = spoolkit.request(
            uid, body=f"<p>PXPS:-{record['alias_id']}#</p>", start=start, sequence=1
        )
        running.send(data)
        assert any(m.reason == "alias_deleted" for m in running.answers(uid))
    finally:
        svc.stop()
    lose_record(cfg.data_dir / "store" / "alpha", record["alias_id"])
    [done] = recover_alpha(cfg)
    assert (done.action, done.uid) == ("skipped", uid)
    assert "declined" in done.detail and "alias_deleted" in done.detail
    assert not [m for m in spoolkit.answers_for(spool, uid) if m.outcome == "updated"]


def test_recover_leaves_a_cancelled_meeting_and_binds_a_series_with_one_occurrence_off(
    tmp_path: Path,
) -> None:
    """A meeting its organizer cancelled stays cancelled (the spool's calendar still lists
    it, as a calendar that keeps cancelled meetings would); a series with one occurrence
    cancelled is still booked, and is bound again when its record is lost."""
    cfg = spool_config(tmp_path)
    start = datetime.now(UTC).replace(microsecond=0, second=0, minute=0) + timedelta(days=2)
    cancelled_uid, cancelled = booked(cfg, start=start, subject="Called off")
    series_uid, series = booked(cfg, start=start, subject="Weekly", rrule="FREQ=WEEKLY;COUNT=4")
    svc = service.start(cfg)
    try:
        running = Running(svc, cfg)
        running.reserve()
        whole, _ = spoolkit.request(cancelled_uid, method="CANCEL", start=start, sequence=1)
        running.send(whole)
        one, _ = spoolkit.request(
            series_uid,
            method="CANCEL",
            start=start + timedelta(days=7),
            recurrence_id=start + timedelta(days=7),
            sequence=1,
        )
        running.send(one)
    finally:
        svc.stop()
    for record in (cancelled, series):
        lose_record(cfg.data_dir / "store" / "alpha", record["alias_id"])
    done = {d.uid: d for d in recover_alpha(cfg)}
    assert done[cancelled_uid].action == "skipped" and "cancelled" in done[cancelled_uid].detail
    assert done[series_uid].action == "bound"


def test_an_offline_deletion_is_kept_for_recovery_too(tmp_path: Path) -> None:
    cfg = spool_config(tmp_path)
    uid, record = booked(cfg)
    with service.OfflineAdmin(cfg) as admin:
        admin.delete_alias("alpha", record["alias"], "someone (vmrsched CLI)")
    lose_record(cfg.data_dir / "store" / "alpha", record["alias_id"])
    [done] = recover_alpha(cfg, dry_run=True)
    assert (done.action, done.uid) == ("skipped", uid)
    assert "deleted by an admin" in done.detail


def test_the_standing_of_a_meeting_is_its_newest_decision_about_the_whole_meeting() -> None:
    """Newest first, as the log reads: what someone other than the organizer sent, an
    unchanged or outdated copy, and an answer about one occurrence say nothing about the
    meeting as a whole; an accept, a decline, a cancellation and a deletion do."""

    def entry(uid: str, outcome: str, reason: str, occurrence: str = "") -> dict[str, str]:
        return {"meeting_uid": uid, "outcome": outcome, "reason": reason, "occurrence": occurrence}

    history = [
        entry("a", "ignored", "not_organizer"),
        entry("a", "ignored", "unchanged"),
        entry("a", "declined", "single_in_past", occurrence="20270101T090000Z"),
        entry("a", "accepted", "edited_recurring"),
        entry("a", "declined", "alias_deleted"),
        entry("b", "ignored", "cancelled"),
        entry("b", "accepted", "new_single"),
        entry("c", "deleted", "admin"),
        entry("d", "quarantined", "general_error"),
    ]
    standing = recovery.standing(history)
    assert {uid: (e["outcome"], e["reason"]) for uid, e in standing.items()} == {
        "a": ("accepted", "edited_recurring"),
        "b": ("ignored", "cancelled"),
        "c": ("deleted", "admin"),
    }


def run_recover(config_file: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmrsched", "recover", "alpha", "--config", str(config_file)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )


def test_recover_refuses_a_damaged_store_with_a_message_and_waits_for_a_stopped_service(
    tmp_path: Path,
) -> None:
    """A store refused as damaged is let go by the running service (it retries it later), so its
    own lock is free: recover takes the data directory's lock, as `store repair` does, and
    refuses while the service runs. Stopped, it names the damage and the tools for it (no
    traceback), and changes no file."""
    cfg = spool_config(tmp_path)
    config_file = tmp_path / "vmrsched.toml"
    config_file.write_text(spool_toml(cfg.data_dir, name="alpha"))
    directory = cfg.data_dir / "store" / "alpha"
    store = Store(directory)
    for _ in range(3):
        store.reserve("81", 6, "video.example.com")
    store.commit()
    store.close(compact=False)
    (journal,) = directory.glob("journal.*.log")
    text = journal.read_bytes()
    middle = text.index(b'"alias"', text.index(b"\n") + 1)
    journal.write_bytes(text[:middle] + b"X" + text[middle + 1 :])
    before = {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}

    held = lock_directory(cfg.data_dir, "the data directory")  # as a running service holds it
    try:
        busy = run_recover(config_file)
    finally:
        os.close(held)
    assert busy.returncode == 1 and "stop the service first" in busy.stderr, busy.stderr

    stopped = run_recover(config_file)
    assert stopped.returncode == 1
    assert "Traceback" not in stopped.stderr
    assert "damaged" in stopped.stderr and "vmrsched store repair" in stopped.stderr
    assert {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()} == before


def restored_after(
    cfg: Config, backup: Path, act: Callable[[service.Service, Running], None]
) -> Path:
    """docs/production.md's restore: the store backed up to `backup`, the service run doing
    `act` (what happens after the backup), stopped, and the backup put back over the store;
    the decisions log and the spool's calendar stay current, as the guide keeps them. Returns
    the store's directory."""
    store_dir = cfg.data_dir / "store" / "alpha"
    shutil.copytree(store_dir, backup)
    svc = service.start(cfg)
    try:
        running = Running(svc, cfg)
        running.reserve()
        act(svc, running)
    finally:
        svc.stop()
    shutil.rmtree(store_dir)
    shutil.copytree(backup, store_dir)
    return store_dir


def test_after_a_restore_recover_ends_bookings_deleted_or_cancelled_since_the_backup(
    tmp_path: Path,
) -> None:
    """docs/production.md's restore: the store comes back from a backup older than an admin's
    deletion of one booking's alias and an organizer's cancellation of another, while the
    decisions log is the current one (kept aside and put back, as the guide says). The
    restored store holds both bookings as bound; recover ends them again, quietly (their
    organizers were told the first time), and says so in its dry run first. A booking the
    decisions log says nothing newer about stays bound."""
    cfg = spool_config(tmp_path)
    spool = cfg.integrations[0].spool_dir(cfg.data_dir)
    start = datetime.now(UTC).replace(microsecond=0, second=0, minute=0) + timedelta(days=2)
    deleted_uid, deleted = booked(cfg, start=start, subject="Deleted after the backup")
    cancelled_uid, cancelled = booked(cfg, start=start, subject="Cancelled after the backup")
    kept_uid, kept = booked(cfg, start=start, subject="Unchanged")

    def after_the_backup(svc: service.Service, running: Running) -> None:
        asyncio.run(svc.admin_delete_alias("alpha", deleted["alias"], "admin token"))
        data, _ = spoolkit.request(cancelled_uid, method="CANCEL", start=start, sequence=1)
        running.send(data)
        running.settle()

    store_dir = restored_after(cfg, tmp_path / "backup", after_the_backup)
    answered = {uid: len(spoolkit.answers_for(spool, uid)) for uid in (deleted_uid, cancelled_uid)}

    dry = {d.uid: d for d in recover_alpha(cfg, dry_run=True)}
    assert dry[deleted_uid].action == "would_release"
    assert "deleted by an admin" in dry[deleted_uid].detail
    assert dry[cancelled_uid].action == "would_release"
    assert "cancelled by its organizer" in dry[cancelled_uid].detail
    assert dry[kept_uid].action == "already_bound"

    done = {d.uid: d for d in recover_alpha(cfg)}
    assert done[deleted_uid].action == done[cancelled_uid].action == "released"
    assert done[kept_uid].action == "already_bound"
    store = Store(store_dir)
    try:
        assert store.by_meeting_uid(deleted_uid) is None
        assert store.by_meeting_uid(cancelled_uid) is None
        assert (store.by_alias(deleted["alias"]) or {}).get("status") == "deleted"
        assert (store.by_alias(cancelled["alias"]) or {}).get("status") == "deleted"
        assert (store.by_meeting_uid(kept_uid) or {}).get("alias") == kept["alias"]
    finally:
        store.close()
    assert {uid: len(spoolkit.answers_for(spool, uid)) for uid in answered} == answered
    [again] = [d for d in recover_alpha(cfg) if d.uid == deleted_uid]
    assert again.action == "known"


def test_after_a_restore_recover_moves_a_booking_to_the_time_the_calendar_holds(
    tmp_path: Path,
) -> None:
    """The store comes back from a backup taken before the organizer moved the meeting a day
    (SEQUENCE 1, accepted). Its conference window would still be the old one (calls at the new
    time refused); recover takes the calendar's newer SEQUENCE as the rules take an update,
    without a second accept to the organizer, and says so in its dry run first."""
    cfg = spool_config(tmp_path)
    spool = cfg.integrations[0].spool_dir(cfg.data_dir)
    start = datetime.now(UTC).replace(microsecond=0, second=0, minute=0) + timedelta(days=2)
    uid, record = booked(cfg, start=start, subject="Moved after the backup")
    moved = start + timedelta(days=1)

    def after_the_backup(_: service.Service, running: Running) -> None:
        data, _ = spoolkit.request(
            uid, body=f"<p>PXPS:-{record['alias_id']}#</p>", start=moved, sequence=1
        )
        running.send(data)
        assert any(m.reason == "edited_single" for m in running.answers(uid))

    store_dir = restored_after(cfg, tmp_path / "backup", after_the_backup)
    answered = len(spoolkit.answers_for(spool, uid))

    [dry] = [d for d in recover_alpha(cfg, dry_run=True) if d.uid == uid]
    assert (dry.action, dry.alias) == ("would_update", record["alias"])
    assert "SEQUENCE 1" in dry.detail
    [done] = [d for d in recover_alpha(cfg) if d.uid == uid]
    assert done.action == "updated"
    store = Store(store_dir)
    try:
        now_bound = store.by_meeting_uid(uid)
        assert now_bound is not None and now_bound["alias"] == record["alias"]
        assert now_bound["sequence"] == 1 and now_bound.get("name") == record.get("name")
        assert decode_schedule(now_bound["schedule"]).start == moved
    finally:
        store.close()
    assert len(spoolkit.answers_for(spool, uid)) == answered
    [again] = [d for d in recover_alpha(cfg) if d.uid == uid]
    assert again.action == "already_bound"


def test_after_a_restore_a_cancellation_followed_by_a_decline_still_ends_the_booking(
    tmp_path: Path,
) -> None:
    """The re-check's case: after the backup the organizer cancels the meeting, then sends it
    again (declined: its alias was let go with the cancellation). The newest decision is that
    decline, but the binding the restored store holds ended with the cancellation, and an
    ended binding never comes back: recover ends it again."""
    cfg = spool_config(tmp_path)
    start = datetime.now(UTC).replace(microsecond=0, second=0, minute=0) + timedelta(days=2)
    uid, record = booked(cfg, start=start, subject="Cancelled, then sent again")

    def after_the_backup(_: service.Service, running: Running) -> None:
        cancel, _ = spoolkit.request(uid, method="CANCEL", start=start, sequence=1)
        running.send(cancel)
        again, _ = spoolkit.request(
            uid, body=f"<p>PXPS:-{record['alias_id']}#</p>", start=start, sequence=2
        )
        running.send(again)
        assert any(m.reason == "alias_deleted" for m in running.answers(uid))

    store_dir = restored_after(cfg, tmp_path / "backup", after_the_backup)

    [done] = [d for d in recover_alpha(cfg) if d.uid == uid]
    assert done.action == "released" and "cancelled by its organizer" in done.detail
    store = Store(store_dir)
    try:
        assert store.by_meeting_uid(uid) is None
        assert (store.by_alias(record["alias"]) or {}).get("status") == "deleted"
    finally:
        store.close()
