"""The decisions log: bounded to twice `keep` entries, readable newest first, and never losing
an entry to a line torn by a crash."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from tests.test_storage_full import fill, small_file_system
from vmrsched.store import decisions
from vmrsched.store.decisions import DecisionLog
from vmrsched.telemetry import STATE_DAMAGED, Alarms, Metrics


def entries(first: int, count: int) -> list[dict[str, object]]:
    return [{"subject": f"meeting {i}", "outcome": "accepted"} for i in range(first, first + count)]


def subjects(path: Path) -> list[str]:
    return [str(entry["subject"]) for entry in decisions.read(path)]


def test_the_log_keeps_the_newest_when_it_reaches_twice_keep(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    log = DecisionLog(path, keep=5)
    log.append(entries(0, 9))
    assert len(subjects(path)) == 9  # under twice keep: untouched
    log.append(entries(9, 1))
    assert subjects(path) == [f"meeting {i}" for i in range(9, 4, -1)]
    log.append(entries(10, 4))
    assert len(subjects(path)) == 9
    log.close()


def test_entries_written_before_a_restart_count_towards_the_bound(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    first = DecisionLog(path, keep=5)
    first.append(entries(0, 8))
    first.close()
    again = DecisionLog(path, keep=5)
    again.append(entries(8, 1))
    assert len(subjects(path)) == 9
    again.append(entries(9, 1))
    assert subjects(path) == [f"meeting {i}" for i in range(9, 4, -1)]
    again.close()


def test_an_entry_after_a_torn_line_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"subject": "whole"}\n{"subject": "tor')  # a crash mid-write
    log = DecisionLog(path)
    log.append(entries(0, 2))
    log.close()
    assert subjects(path) == ["meeting 1", "meeting 0", "whole"]
    assert decisions.search(path, "meeting 0") == [{"subject": "meeting 0", "outcome": "accepted"}]


def test_search_finds_every_word_newest_first(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    log = DecisionLog(path)
    log.append(
        [
            {"subject": "Board meeting", "organizer": "ada@example.com", "outcome": "accepted"},
            {"subject": "Board lunch", "organizer": "bob@example.com", "outcome": "declined"},
            {"subject": "board MEETING again", "organizer": "bob@example.com"},
        ]
    )
    log.close()
    found = decisions.search(path, "board meeting")
    assert [e["subject"] for e in found] == ["board MEETING again", "Board meeting"]
    assert decisions.search(path, "board", limit=1)[0]["subject"] == "board MEETING again"
    assert decisions.search(tmp_path / "none.jsonl") == []


def test_an_integration_that_decides_nothing_creates_no_file(tmp_path: Path) -> None:
    path = tmp_path / "decisions" / "alpha.jsonl"
    DecisionLog(path).close()
    assert not path.parent.exists()
    log = DecisionLog(path)
    log.append(entries(0, 1))
    log.close()
    assert subjects(path) == ["meeting 0"]


def test_a_torn_last_line_is_cut_off_before_the_next_entry(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"subject": "whole"}\n{"subject": "tor')  # a crash mid-write
    log = DecisionLog(path)
    log.append(entries(0, 1))
    log.close()
    assert path.read_bytes() == b'{"subject": "whole"}\n' + decisions.line(entries(0, 1)[0])


def test_a_damaged_line_is_skipped_and_raises_the_alarm(tmp_path: Path) -> None:
    alarms = Alarms(Metrics())
    path = tmp_path / "alpha.jsonl"
    log = DecisionLog(path)
    log.append(entries(0, 3))
    log.close()
    data = path.read_bytes()
    second = data.index(b"\n") + 1
    path.write_bytes(data[:second] + b"#" + data[second + 1 :])  # one damaged byte
    assert subjects(path) == ["meeting 2", "meeting 0"]
    [alarm] = alarms.active("alpha")
    assert alarm.name == STATE_DAMAGED and str(path) in alarm.message
    assert "line 2" in alarm.message


def test_a_batch_the_disk_refuses_leaves_the_log_as_it_was_and_the_next_one_is_written(
    tmp_path: Path,
) -> None:
    """A full disk refuses a batch of any size: the file keeps exactly what it held (no part of
    the batch, so no line glued to the next batch's), the error reaches the caller (who says
    which decisions were lost), and once there is room the next batch is written whole."""
    with small_file_system(tmp_path / "small", "64k") as folder:
        log = DecisionLog(folder / "alpha.jsonl")
        log.append([{"correlation_id": "before", "outcome": "accepted"}])
        held = (folder / "alpha.jsonl").read_bytes()
        filler = fill(folder)
        refused = [{"correlation_id": f"lost-{i}", "detail": "x" * 200} for i in range(60)]
        with pytest.raises(OSError) as caught:
            log.append(refused)
        assert caught.value.errno == errno.ENOSPC
        assert (folder / "alpha.jsonl").read_bytes() == held
        filler.unlink()
        log.append([{"correlation_id": "after", "outcome": "accepted"}])
        log.close()
        ids = [e["correlation_id"] for e in decisions.read(folder / "alpha.jsonl")]
        assert ids == ["after", "before"]
