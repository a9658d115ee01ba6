"""A file of a store that is gone is damage, as a damaged one is (DESIGN "Storage",
docs/guarantees.md "What survives what"): the store refuses to open (store_corrupt, no file
changed), `vmrsched store check` names the missing file and what says it existed, and `store
repair` salvages the rest into a store that opens. A journal a compaction removed is not
missing: the snapshot it wrote says which journals it holds, and every crash point of a
compaction still opens."""

from __future__ import annotations

import itertools
import os
import shutil
from pathlib import Path

import pytest

from vmrsched import config
from vmrsched.cli import main as cli
from vmrsched.store import Store, StoreCorruptError
from vmrsched.store.journal import AtomicJSONStorage, scan
from vmrsched.store.repair import check, repair


def reserve(store: Store, count: int = 2) -> list[str]:
    """`count` aliases reserved and committed (acknowledged: a 201 to the add-in)."""
    ids = [store.reserve("v", 8, "video.example.com")["alias_id"] for _ in range(count)]
    store.commit()
    return ids


def crash(store: Store) -> None:
    """The process dies: nothing synced again, closed or compacted; its lock goes."""
    os.close(store._lock_fd)
    store._lock_fd = -1


def files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def journals(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("journal.*.log"))


def ids_in(directory: Path) -> set[str]:
    store = Store(directory)
    try:
        return {r["alias_id"] for r in store.records()}
    finally:
        store.close(compact=False)


def lines(directory: Path) -> list[str]:
    return check(directory).lines()


def line_for(directory: Path, name: str) -> str:
    [line] = [line for line in lines(directory) if line.startswith(f"  {name}: ")]
    return line


def test_a_deleted_journal_that_a_later_one_seals_is_refused_and_listed(tmp_path: Path) -> None:
    store = Store(tmp_path)
    first = reserve(store)
    store.close(compact=False)  # journal.1.log
    store = Store(tmp_path)
    second = reserve(store)  # journal.2.log, born with the seal of journal.1.log
    store.close(compact=False)
    assert journals(tmp_path) == ["journal.1.log", "journal.2.log"]
    sealed = scan(tmp_path / "journal.2.log").entries[0]
    assert sealed == {"op": "seal", "gen": 1, "entries": 2}

    (tmp_path / "journal.1.log").unlink()
    before = files(tmp_path)
    with pytest.raises(StoreCorruptError) as refused:
        Store(tmp_path)
    assert "journal.1.log is missing: journal.2.log seals journal.1.log with 2 entries" in str(
        refused.value
    )
    assert "there is no store.json" in str(refused.value)
    assert files(tmp_path) == before  # nothing changed

    report = check(tmp_path)
    assert report.damaged and lines(tmp_path)[0].endswith("DAMAGED")
    said = line_for(tmp_path, "journal.1.log")
    assert "2 unreadable" in said and "missing: journal.2.log seals journal.1.log" in said

    repair(tmp_path)
    assert ids_in(tmp_path) == set(second)  # what the journal that is gone held is lost
    assert not check(tmp_path).damaged
    assert set(first).isdisjoint(ids_in(tmp_path))


def test_a_deleted_snapshot_after_a_clean_close_is_refused_and_listed(tmp_path: Path) -> None:
    store = Store(tmp_path)
    kept = reserve(store, 3)
    store.close()  # compacted: store.json, and journal.2.log holding the seal of journal.1.log
    assert sorted(files(tmp_path)) == ["journal.2.log", "store.json"]
    assert [e["op"] for e in scan(tmp_path / "journal.2.log").entries] == ["seal"]

    (tmp_path / "store.json").unlink()
    before = files(tmp_path)
    with pytest.raises(StoreCorruptError, match=r"journal\.1\.log is missing"):
        Store(tmp_path)
    assert files(tmp_path) == before

    snapshot = line_for(tmp_path, "store.json")
    assert "missing" in snapshot and not snapshot.endswith(": ok")
    assert "journal.2.log seals journal.1.log" in line_for(tmp_path, "journal.1.log")
    assert set(kept).isdisjoint(ids_in_after_repair(tmp_path))


def ids_in_after_repair(directory: Path) -> set[str]:
    repair(directory)
    return ids_in(directory)


def test_a_deleted_snapshot_is_noticed_when_no_seal_is_left_of_the_journals_it_held(
    tmp_path: Path,
) -> None:
    """A compaction with nothing written since the open leaves no journal at all, and the
    next journal holds no seal: its generation says that others came before it."""
    store = Store(tmp_path)
    reserve(store)
    store.close()
    store = Store(tmp_path)
    store.compact()  # journal.2.log (a seal) compacted away: only store.json
    store.close()
    assert sorted(files(tmp_path)) == ["store.json"]
    store = Store(tmp_path)
    later = reserve(store)
    store.close(compact=False)
    [live] = journals(tmp_path)
    assert live != "journal.1.log"  # generations only grow, past what the snapshot holds
    assert not any(e["op"] == "seal" for e in scan(tmp_path / live).entries)

    (tmp_path / "store.json").unlink()
    missing = f"journal.1.log to journal.2.log are missing: {live} comes after them"
    with pytest.raises(StoreCorruptError, match=missing):
        Store(tmp_path)
    assert "missing" in line_for(tmp_path, "store.json")
    assert ids_in_after_repair(tmp_path) == set(later)


def test_store_check_on_the_command_line_names_the_missing_journal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = config.store_dir(tmp_path, "alpha")
    store = Store(directory)
    reserve(store)
    store.close(compact=False)
    store = Store(directory)
    reserve(store)
    store.close(compact=False)
    (directory / "journal.1.log").unlink()
    code = cli.main(["store", "check", "alpha", "--data-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 1, out
    [line] = [line for line in out.splitlines() if "journal.1.log:" in line]
    assert "missing: journal.2.log seals journal.1.log with 2 entries" in line


def test_a_journal_between_the_snapshot_and_the_live_one_is_missing_too(tmp_path: Path) -> None:
    store = Store(tmp_path)
    reserve(store)
    store.close()  # store.json holding journal.1.log; journal.2.log: its seal
    for _ in range(2):
        store = Store(tmp_path)
        reserve(store)
        crash(store)
    assert journals(tmp_path) == ["journal.2.log", "journal.3.log", "journal.4.log"]
    (tmp_path / "journal.3.log").unlink()
    with pytest.raises(StoreCorruptError, match=r"journal\.3\.log is missing: journal\.4\.log"):
        Store(tmp_path)
    assert "store.json holds the journals up to generation 1 only" in line_for(
        tmp_path, "journal.3.log"
    )
    assert line_for(tmp_path, "store.json").endswith(": ok")


def _compaction_states(tmp_path: Path) -> tuple[dict[str, bytes], dict[str, bytes], set[str]]:
    """The files before and after a compaction of three journals over an earlier snapshot,
    and every alias acknowledged."""
    work = tmp_path / "work"
    store = Store(work)
    ids = set(reserve(store))
    store.close()
    for _ in range(3):
        store = Store(work)
        ids |= set(reserve(store))
        crash(store)
    store = Store(work)
    ids |= set(reserve(store))
    before = files(work)
    store.compact()
    after = files(work)
    store.close(compact=False)
    assert len([n for n in before if n.startswith("journal.")]) >= 3
    return before, after, ids


def test_every_crash_point_of_a_compaction_opens_with_every_acknowledged_alias(
    tmp_path: Path,
) -> None:
    """The new journal (born with the seal of the closed one) first, then the snapshot, then
    the covered journals go one by one: a crash between any two steps opens whole."""
    before, after, ids = _compaction_states(tmp_path)
    new = [n for n in after if n not in before]
    old = sorted(n for n in before if n.startswith("journal."))
    assert new and all(n not in after for n in old)  # the compaction removed them all
    states = [{**before, **{n: after[n] for n in new}}]  # the snapshot not yet written
    for left in range(len(old) + 1):  # the snapshot written, `left` old journals not yet gone
        for kept in itertools.combinations(old, left):
            states.append({**after, **{n: before[n] for n in kept}})
    for number, state in enumerate(states):
        directory = tmp_path / f"crash{number}"
        directory.mkdir()
        for name, data in state.items():
            (directory / name).write_bytes(data)
        assert ids_in(directory) == ids, sorted(state)
        assert not check(directory).damaged, lines(directory)


def test_a_snapshot_written_before_it_said_what_it_holds_opens_as_it_did(
    tmp_path: Path,
) -> None:
    """A snapshot without the table of the journals it holds (an older release's, or a
    migration's): a journal that is gone cannot be told from a compacted one, so none is."""
    store = Store(tmp_path)
    reserve(store)
    store.close()
    snapshot = AtomicJSONStorage(tmp_path / "store.json")
    tables = snapshot.read()
    assert tables is not None and "journals" in tables
    del tables["journals"]
    snapshot.write(tables)
    for _ in range(2):
        store = Store(tmp_path)
        reserve(store)
        store.close(compact=False)
    assert journals(tmp_path) == ["journal.2.log", "journal.3.log", "journal.4.log"]
    (tmp_path / "journal.2.log").unlink()
    assert len(ids_in(tmp_path)) == 6


def test_repair_of_a_missing_journal_leaves_a_store_that_grows_past_it(tmp_path: Path) -> None:
    store = Store(tmp_path)
    reserve(store)
    store.close(compact=False)
    store = Store(tmp_path)
    kept = set(reserve(store))
    store.close(compact=False)
    (tmp_path / "journal.1.log").unlink()
    repair(tmp_path)
    [aside] = tmp_path.glob("damaged-*")
    assert sorted(p.name for p in aside.iterdir()) == ["journal.2.log"]
    store = Store(tmp_path)
    kept |= set(reserve(store))
    store.close(compact=False)
    assert journals(tmp_path) == ["journal.3.log"]  # after every generation the old files named
    assert ids_in(tmp_path) == kept
    shutil.rmtree(aside)
    assert not check(tmp_path).damaged


def test_a_run_of_missing_journals_whose_seals_are_gone_too_has_no_count(tmp_path: Path) -> None:
    """An older store.json put back over a store compacted twice since: the journals between
    are gone, and only the newest one's seal is left (in the live journal). How many entries
    the run held is not known, and `store check` says so rather than give that one's count as
    if it were the run's."""
    store = Store(tmp_path)
    reserve(store)
    store.close()  # store.json holding journal.1.log
    older = (tmp_path / "store.json").read_bytes()
    for _ in range(2):
        store = Store(tmp_path)
        reserve(store, 3)
        store.close()
    [live] = journals(tmp_path)
    (tmp_path / "store.json").write_bytes(older)
    [line] = [x for x in lines(tmp_path) if "missing:" in x]
    assert line.startswith("  journal.2.log to journal.") and f"missing: {live} seals" in line
    assert "unreadable" not in line and "how many entries: not known" in line
