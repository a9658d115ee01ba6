"""The spool's calendar (calendar/accepted.jsonl, what `vmrsched recover` reads) follows the
rule of every file the service keeps (DESIGN "Storage"): each line carries a checksum; a torn
last line (a crash mid-write) is dropped and logged, never glued to the next acceptance; any
other damage raises state_damaged, keeps a copy of the file aside as
`accepted.jsonl.damaged-<time>`, is listed by `vmrsched store check`, and loses nothing
readable. A calendar written before its lines carried checksums still reads."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from tests import spoolkit
from tests.configs import spool_config
from vmrsched import service
from vmrsched.cli import main as cli
from vmrsched.mailbox import itip
from vmrsched.mailbox.spool import CALENDAR_FILE, SpoolMailbox
from vmrsched.rules.meetings import Meeting
from vmrsched.rules.stored_meetings import meeting_to_json
from vmrsched.store.journal import encode_entry
from vmrsched.store.repair import SPOOL_CALENDAR
from vmrsched.telemetry import STATE_DAMAGED, Alarms, Metrics

START = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(days=2)
WINDOW = (START - timedelta(days=1), START + timedelta(days=1))


def meeting(uid: str) -> Meeting:
    data, _ = spoolkit.request(uid=uid, body="<p>PXPS:-x#</p>", start=START)
    return itip.parse_calendar(data, correlation_id="c").meetings[0]


def old_line(uid: str) -> bytes:
    """A line as the spool wrote it before lines carried checksums."""
    return orjson.dumps(meeting_to_json(meeting(uid))) + b"\n"


def new_line(uid: str) -> bytes:
    return encode_entry(meeting_to_json(meeting(uid)))


def calendar_of(spool_dir: Path) -> Path:
    return spool_dir / "calendar" / "accepted.jsonl"


def read_uids(spool_dir: Path) -> list[str]:
    """What recover reads: the calendar of a gateway that is not the service's."""
    reader = SpoolMailbox(spool_dir, "alpha")
    try:
        return sorted(entry.meeting.uid for entry in reader.calendar(*WINDOW))
    finally:
        reader.close()


def record(spool: SpoolMailbox, *uids: str) -> None:
    for uid in uids:
        spool.record_accepted(meeting(uid))
    spool.sync()


def test_a_torn_last_line_is_dropped_and_logged_and_never_glued_to_the_next(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The audit's case: power lost mid-append leaves half a line; the next accepted meeting
    was written onto it and lost, for recover too. Now the start cuts the half line off and
    says so; a crash's leftover is no damage, so no alarm."""
    alarms = Alarms(Metrics())
    calendar = calendar_of(tmp_path)
    calendar.parent.mkdir()
    calendar.write_bytes(old_line("before") + b'{"uid":"torn-half","method":"REQ')
    with caplog.at_level(logging.WARNING, "vmrsched.spool"):
        spool = SpoolMailbox(tmp_path, "alpha", exclusive=True)
    [said] = [r.getMessage() for r in caplog.records if "torn last line" in r.getMessage()]
    assert str(calendar) in said
    record(spool, "after")
    spool.close()
    assert read_uids(tmp_path) == ["after", "before"]
    assert b"torn-half" not in calendar.read_bytes()
    assert alarms.active() == []


def test_a_whole_last_line_that_lost_only_its_newline_is_kept(tmp_path: Path) -> None:
    calendar = calendar_of(tmp_path)
    calendar.parent.mkdir()
    calendar.write_bytes(new_line("first") + new_line("whole")[:-1])
    spool = SpoolMailbox(tmp_path, "alpha", exclusive=True)
    record(spool, "next")
    spool.close()
    assert read_uids(tmp_path) == ["first", "next", "whole"]


def test_a_calendar_from_before_checksums_still_reads_and_new_lines_carry_one(
    tmp_path: Path,
) -> None:
    calendar = calendar_of(tmp_path)
    calendar.parent.mkdir()
    calendar.write_bytes(old_line("old-1") + old_line("old-2"))
    spool = SpoolMailbox(tmp_path, "alpha", exclusive=True)
    record(spool, "new-1")
    spool.close()
    assert read_uids(tmp_path) == ["new-1", "old-1", "old-2"]
    assert calendar.read_bytes().endswith(new_line("new-1"))


def damage(calendar: Path) -> bytes:
    """Garble the text of line 2 (nothing whole left in it) and one character of line 3's
    checksum (its text whole); returns the damaged file's bytes."""
    lines = calendar.read_bytes().split(b"\n")
    lines[1] = lines[1][:30] + b"GARBAGE" + lines[1][37:]
    lines[2] = (b"0" if lines[2][:1] != b"0" else b"1") + lines[2][1:]
    damaged = b"\n".join(lines)
    calendar.write_bytes(damaged)
    return damaged


def test_a_damaged_calendar_raises_state_damaged_and_loses_nothing_readable(
    tmp_path: Path,
) -> None:
    cfg = spool_config(tmp_path)
    spool_dir = cfg.integrations[0].spool_dir(cfg.data_dir)
    spool = SpoolMailbox(spool_dir, "alpha")
    record(spool, "one", "two", "three", "four")
    spool.close()
    calendar = calendar_of(spool_dir)
    damaged = damage(calendar)
    assert read_uids(spool_dir) == ["four", "one", "three"]  # recover, before any start

    svc = service.start(cfg)
    try:
        spoolkit.wait_for(lambda: any(a.name == STATE_DAMAGED for a in svc.ctx.alarms.active()))
        alarms = {(a.integration, a.name): a.message for a in svc.ctx.alarms.active()}
        [aside] = calendar.parent.glob("accepted.jsonl.damaged-*")
        assert aside.read_bytes() == damaged  # every byte kept
        assert str(aside) in alarms[("alpha", STATE_DAMAGED)]
        assert "line(s) 2, 3" in alarms[("alpha", STATE_DAMAGED)]
        data, uid = spoolkit.request(body="<p>TOK:-00000000-0000-4000-8000-00000000ca1e#</p>")
        spoolkit.wait_handled(spool_dir, spoolkit.drop(spool_dir / "inbox", data))
        spoolkit.wait_for(lambda: len(spoolkit.answers_for(spool_dir, uid)) == 2)
    finally:
        svc.stop()
    assert read_uids(spool_dir) == sorted(["four", "one", "three", uid])

    # dealt with once: the next start finds a sound file (no second copy set aside), and names
    # the copy kept before it until an admin has looked at it and deleted it
    svc = service.start(cfg, damage_recheck_interval=0.05)
    try:
        spoolkit.wait_handled(spool_dir, spoolkit.drop(spool_dir / "inbox", data))
        assert len(list(calendar.parent.glob("accepted.jsonl.damaged-*"))) == 1
        spoolkit.wait_for(lambda: any(a.name == STATE_DAMAGED for a in svc.ctx.alarms.active()))
        [kept] = [a.message for a in svc.ctx.alarms.active() if a.name == STATE_DAMAGED]
        assert str(aside) in kept and "kept aside before this start" in kept
        aside.unlink()
        spoolkit.wait_for(lambda: not any(a.name == STATE_DAMAGED for a in svc.ctx.alarms.active()))
    finally:
        svc.stop()


def test_recover_reads_every_good_line_of_a_damaged_calendar(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Old lines, new lines, a garbled one between them and a torn tail, as recover may find
    them after a crash (the service not started since): every good line is bound again."""
    cfg = spool_config(tmp_path)
    spool_dir = cfg.integrations[0].spool_dir(cfg.data_dir)
    calendar = calendar_of(spool_dir)
    calendar.parent.mkdir(parents=True)
    garbled = b"0badc0de {not a meeting\n"
    calendar.write_bytes(
        old_line("old") + garbled + new_line("new") + b"{not json\n" + new_line("last")[:40]
    )
    with caplog.at_level(logging.WARNING, "vmrsched.spool"):
        done = service.recover_integration(
            cfg, cfg.integrations[0], datetime.now(UTC), True, lambda _: None
        )
    assert sorted((r.uid, r.action) for r in done) == [
        ("new", "would_bind"),
        ("old", "would_bind"),
    ]
    assert any("damaged line(s) 2, 4" in r.getMessage() for r in caplog.records)


def test_store_check_lists_a_damaged_calendar_and_the_copy_kept_aside(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    damaged = calendar_of(data / "spool" / "alpha")
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(new_line("one") + b"{garbage\n" + old_line("three"))
    aside = damaged.with_name("accepted.jsonl.damaged-20261122T120000Z")
    aside.write_bytes(b"kept by an earlier start")
    torn = calendar_of(data / "spool" / "beta")
    torn.parent.mkdir(parents=True)
    torn.write_bytes(new_line("one") + old_line("two") + b"0123")

    code = cli.main(["store", "check", "--data-dir", str(data)])
    out = capsys.readouterr().out
    assert code == 1
    for path, says in [
        (damaged, "DAMAGED: damaged line(s) 2: 2 entries readable"),
        (aside, "DAMAGED: kept aside"),
        (torn, "ok: 2 entries; a torn last line"),
    ]:
        [line] = [line for line in out.splitlines() if f" {path.relative_to(data)}: " in line]
        assert says in line, line


def test_store_check_finds_a_spool_the_config_keeps_elsewhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    elsewhere = tmp_path / "rooms" / "board"
    config_file = tmp_path / "vmrsched.toml"
    config_file.write_text(
        f"""
[server]
data_dir = "{tmp_path / "data"}"
[[integrations]]
name = "alpha"
[integrations.exchange]
mailbox_name = "Video Room"
mailbox_email = "vmr@example.com"
[integrations.addin]
token_validation = "none"
[integrations.spool]
directory = "{elsewhere}"
"""
    )
    calendar = calendar_of(elsewhere)
    calendar.parent.mkdir(parents=True)
    calendar.write_bytes(new_line("one") + b"{garbage\n" + new_line("three"))
    (tmp_path / "data" / "store").mkdir(parents=True)
    code = cli.main(["store", "check", "--config", str(config_file)])
    out = capsys.readouterr().out
    assert code == 1
    assert f"{calendar}: DAMAGED: damaged line(s) 2" in out


def test_store_check_looks_where_the_spool_writes(tmp_path: Path) -> None:
    spool = SpoolMailbox(tmp_path)
    assert spool.calendar_dir / CALENDAR_FILE == tmp_path / SPOOL_CALENDAR
    spool.close()
