"""The decisions log: bounded to twice `keep` entries, readable newest first, and never losing
an entry to a line torn by a crash."""

from __future__ import annotations

from pathlib import Path

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
