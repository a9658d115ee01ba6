"""The decisions log follows the rule of every file the service keeps (DESIGN "Storage",
docs/guarantees.md "The other files the service keeps"), as the queue journals do: its lines
carry a checksum (older plain lines still read), damage is found when the service starts,
the log is set aside as `<name>.damaged-<time>` with every readable line kept in it, and
state_damaged names it; `vmrsched store check` lists the damaged log and the copy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests import spoolkit
from tests.configs import spool_config
from vmrsched import service
from vmrsched.cli import main as cli
from vmrsched.store import decisions
from vmrsched.store.decisions import DecisionLog, FileDecisions
from vmrsched.store.repair import StateFile, check_state
from vmrsched.telemetry import STATE_DAMAGED, Alarms, Metrics


def decision(subject: str, outcome: str = "accepted") -> dict[str, str]:
    return {"subject": subject, "outcome": outcome, "reason": "new_single"}


def subjects(path: Path) -> list[str]:
    return [str(entry["subject"]) for entry in decisions.read(path)]


def state(data: Path, name: str) -> StateFile:
    [found] = [f for f in check_state(data) if f.path == name]
    return found


def damage_line(path: Path, needle: bytes, old: bytes, new: bytes) -> None:
    """Edit the line holding `needle`, leaving every other byte as it is."""
    lines = path.read_bytes().split(b"\n")
    [index] = [i for i, line in enumerate(lines) if needle in line]
    lines[index] = lines[index].replace(old, new)
    path.write_bytes(b"\n".join(lines))


def test_a_decline_edited_into_an_acceptance_is_never_read_as_one(tmp_path: Path) -> None:
    alarms = Alarms(Metrics())
    path = tmp_path / "decisions" / "alpha.jsonl"
    writer = DecisionLog(path)
    writer.append([decision("first"), decision("refused", "declined"), decision("last")])
    writer.close()
    damage_line(path, b"refused", b'"declined"', b'"accepted"')  # still JSON, still parses

    assert subjects(path) == ["last", "first"]
    [alarm] = alarms.active("alpha")
    assert alarm.name == STATE_DAMAGED and "line 2" in alarm.message
    found = state(tmp_path, "decisions/alpha.jsonl")
    assert found.damaged and "unreadable line(s) 2" in found.detail
    assert "failing the checksum" in found.detail


def test_lines_written_before_lines_carried_a_checksum_still_read(tmp_path: Path) -> None:
    path = tmp_path / "decisions" / "alpha.jsonl"
    path.parent.mkdir()
    path.write_text(json.dumps(decision("old one")) + "\n" + json.dumps(decision("old two")) + "\n")
    writer = DecisionLog(path)
    assert writer.settle()
    writer.append([decision("new")])
    writer.close()
    assert subjects(path) == ["new", "old two", "old one"]
    assert not list(path.parent.glob("*.damaged-*"))
    assert state(tmp_path, "decisions/alpha.jsonl").detail == "ok: 3 decisions"


def test_a_damaged_log_is_set_aside_when_its_writer_is_first_handed_out(tmp_path: Path) -> None:
    """No search needed: the check runs when the poller takes its writer, off its thread."""
    alarms = Alarms(Metrics())
    logs = FileDecisions(tmp_path)
    path = logs.layout.decisions("alpha")
    writer = logs.writer("alpha")
    writer.append([decision("one"), decision("two"), decision("three")])
    writer.close()
    damage_line(path, b'"two"', b'"two"', b'"tw0"')
    original = path.read_bytes()
    plain = json.dumps(decision("plain, from before")).encode() + b"\n"  # an older release's
    path.write_bytes(plain + original + b'{"subject": "tor')  # and a crash mid-write

    again = FileDecisions(tmp_path)
    writer = again.writer("alpha")
    again.checked(timeout=10)
    [aside] = path.parent.glob("alpha.jsonl.damaged-*")
    assert aside.read_bytes() == plain + original + b'{"subject": "tor'  # every byte kept
    assert subjects(path) == ["three", "one", "plain, from before"]  # every line that reads
    [alarm] = alarms.active("alpha")
    assert alarm.name == STATE_DAMAGED and str(aside) in alarm.message

    writer.append([decision("four")])  # into the log as rewritten, not the old file
    writer.close()
    assert subjects(path) == ["four", "three", "one", "plain, from before"]
    assert state(tmp_path, "decisions/alpha.jsonl").detail == "ok: 4 decisions"
    kept = state(tmp_path, str(aside.relative_to(tmp_path)))
    assert kept.damaged and "kept aside" in kept.detail


def test_what_is_appended_before_the_check_is_kept_by_it(tmp_path: Path) -> None:
    path = tmp_path / "alpha.jsonl"
    path.write_bytes(b"garbage\n" + decisions.line(decision("before")))
    writer = DecisionLog(path)
    writer.append([decision("early")])  # the poller answered before the check came
    assert writer.settle()
    assert not writer.settle()  # once
    writer.append([decision("late")])
    writer.close()
    assert subjects(path) == ["late", "early", "before"]
    [aside] = tmp_path.glob("alpha.jsonl.damaged-*")
    assert aside.read_bytes().startswith(b"garbage\n")


def test_a_check_still_waiting_when_the_log_is_closed_waits_for_the_next_start(
    tmp_path: Path,
) -> None:
    path = tmp_path / "alpha.jsonl"
    path.write_bytes(b"garbage\n")
    writer = DecisionLog(path)
    writer.close()  # the service stopped before the check came to it
    assert not writer.settle(unless_closed=True)
    assert path.read_bytes() == b"garbage\n" and not list(tmp_path.glob("*.damaged-*"))
    writer.handed_out()  # the poller started again
    assert writer.settle(unless_closed=True)
    assert path.read_bytes() == b"" and len(list(tmp_path.glob("*.damaged-*"))) == 1


def test_a_service_start_finds_a_damaged_decisions_log_and_a_restart_keeps_it_listed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = spool_config(tmp_path)
    path = cfg.data_dir / "decisions" / "alpha.jsonl"
    path.parent.mkdir(parents=True)
    # as an older release wrote it (plain JSON lines), one line damaged since
    lines = [json.dumps(decision(f"meeting {i}", "declined")).encode() + b"\n" for i in range(3)]
    lines[1] = b"{garbage" + lines[1][8:]
    path.write_bytes(b"".join(lines))

    svc = service.start(cfg)
    try:

        def raised() -> bool:
            return any(a.name == STATE_DAMAGED for a in svc.ctx.alarms.active("alpha"))

        spoolkit.wait_for(raised)
        [alarm] = [a for a in svc.ctx.alarms.active("alpha") if a.name == STATE_DAMAGED]
        [aside] = path.parent.glob("alpha.jsonl.damaged-*")
        assert str(aside) in alarm.message
    finally:
        svc.stop()
    assert subjects(path) == ["meeting 2", "meeting 0"]
    assert aside.read_bytes() == b"".join(lines)

    svc = service.start(cfg)  # the log reads whole now: nothing more is set aside
    try:
        logs = svc.ctx.stores.decisions
        assert isinstance(logs, FileDecisions)
        logs.checked(timeout=10)
        assert list(path.parent.glob("alpha.jsonl.damaged-*")) == [aside]
    finally:
        svc.stop()
    code = cli.main(["store", "check", "--data-dir", str(cfg.data_dir)])
    out = capsys.readouterr().out
    assert code == 1
    [said] = [line for line in out.splitlines() if f" {aside.relative_to(cfg.data_dir)}: " in line]
    assert "kept aside" in said
    [live] = [line for line in out.splitlines() if " decisions/alpha.jsonl: " in line]
    assert "ok: 2 decisions" in live
