from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import pytest
from tinydb import TinyDB

from tests.filestate import snapshot
from vmrsched.pexip.policy import AliasIndex, Room, RoomSettings
from vmrsched.postgres.records import Records
from vmrsched.rules import aliases
from vmrsched.rules.meetings import Action, Decision, Meeting
from vmrsched.rules.recurrence import Schedule
from vmrsched.store import (
    DatabaseStore,
    Store,
    StoreBrokenError,
    StoreCorruptError,
    StoreInUseError,
    decode_schedule,
    encode_schedule,
)
from vmrsched.store.repair import check, repair
from vmrsched.store.writes import StoreWrites

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
HERE = Path(__file__).parent


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


def make_file(tmp_path: Path, clock: Clock | None = None, **kw: object) -> Store:
    return Store(tmp_path, clock=clock or Clock(), rng=random.Random(3), **kw)  # type: ignore[arg-type]


class Opener(Protocol):
    """Opens the store of integration "alpha" on one backend (again: as after a restart)."""

    def __call__(self, clock: Clock | None = None, **kw: Any) -> StoreWrites: ...

    def archived_ids(self) -> list[str]: ...


class FileOpener:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def __call__(self, clock: Clock | None = None, **kw: Any) -> StoreWrites:
        return make_file(self.directory, clock, **kw)

    def archived_ids(self) -> list[str]:
        archive = TinyDB(self.directory / "archive.json").table("archive").all()
        return [d["alias_id"] for d in archive]


class DatabaseOpener:
    def __init__(self, connect: Callable[[], Any]) -> None:
        self.connect = connect

    def __call__(self, clock: Clock | None = None, **kw: Any) -> StoreWrites:
        records = Records(self.connect, "alpha")
        return DatabaseStore(records, clock=clock or Clock(), rng=random.Random(3), **kw)

    def archived_ids(self) -> list[str]:
        with self.connect() as conn:
            rows = conn.execute(
                "SELECT alias_id FROM vmrsched_records WHERE archived ORDER BY alias_id"
            ).fetchall()
        return [str(row[0]) for row in rows]


def bind(
    store: StoreWrites, alias_id: str, uid: str = "uid-1", days: int = 1, seq: int = 0
) -> None:
    start = NOW + timedelta(days=days)
    store.apply(
        Action(
            "bind",
            alias_id=alias_id,
            meeting_uid=uid,
            sequence=seq,
            schedule=Schedule(start, start + timedelta(hours=1)),
        ),
        {"name": "Standup"},
    )


def test_reserve_indexes_and_survives_reopen(make: Opener) -> None:
    store = make()
    rec = store.reserve("vmr", 6, "video.example.com")
    store.commit()
    store.close(compact=False)
    again = make()
    assert again.get(rec["alias_id"]) == rec
    assert again.by_alias(rec["alias"].upper()) == rec
    assert again.by_alias("sip:" + rec["alias"]) == rec
    assert again.by_alias(rec["numeric_alias"]) == rec
    assert again.numeric_taken(rec["numeric_alias"])


def test_bind_and_lookups_by_uid_and_token(make: Opener) -> None:
    store = make()
    rec = store.reserve("vmr", 6, "d")
    bind(store, rec["alias_id"], "meeting-1")
    state = store.state_for(aliases.Token("PXPS", rec["alias_id"]), "meeting-1")
    assert state.token_record is not None and state.token_record.status == "bound"
    assert state.uid_record == state.token_record
    assert store.by_meeting_uid("meeting-1")["name"] == "Standup"  # type: ignore[index]


def test_conference_names_are_unique(make: Opener) -> None:
    store = make()
    a, b = store.reserve("v", 6, "d"), store.reserve("v", 6, "d")
    bind(store, a["alias_id"], "m1")
    bind(store, b["alias_id"], "m2")
    name_a, name_b = store.get(a["alias_id"])["name"], store.get(b["alias_id"])["name"]  # type: ignore[index]
    assert name_a == "Standup" and name_b.startswith("Standup ") and name_a != name_b
    bind(store, a["alias_id"], "m1", seq=1)  # an edit keeps the name
    assert store.get(a["alias_id"])["name"] == "Standup"  # type: ignore[index]


def test_cancel_makes_the_alias_deleted_even_after_archiving(make: Opener) -> None:
    store = make()
    rec = store.reserve("v", 6, "d")
    bind(store, rec["alias_id"])
    store.apply(Action("cancel", alias_id=rec["alias_id"], meeting_uid="uid-1", sequence=1))
    assert store.sweep() == 1
    assert store.get(rec["alias_id"]) is None
    state = store.state_for(aliases.Token("PXPS", rec["alias_id"]), "other")
    assert state.token_record is not None and state.token_record.status == "deleted"
    assert store.numeric_taken(rec["numeric_alias"])  # never handed out again
    store.close()
    again = make()
    assert again.archived(rec["alias_id"]) is not None
    assert again.numeric_taken(rec["numeric_alias"])
    assert make.archived_ids() == [rec["alias_id"]]


def test_reservations_expire_after_the_ttl(make: Opener) -> None:
    clock = Clock()
    store = make(clock, reservation_ttl=timedelta(days=30))
    rec = store.reserve("v", 6, "d")
    clock.now = NOW + timedelta(days=29)
    assert store.sweep() == 0
    clock.now = NOW + timedelta(days=30, seconds=1)
    assert store.sweep() == 1
    state = store.state_for(aliases.Token("PXPS", rec["alias_id"]), "u")
    assert state.token_record is not None and state.token_record.status == "deleted"


def test_finished_conferences_move_to_the_archive_after_grace(make: Opener) -> None:
    clock = Clock()
    store = make(clock)
    rec = store.reserve("v", 6, "d")
    bind(store, rec["alias_id"], days=1)
    clock.now = NOW + timedelta(days=3)
    assert store.sweep() == 0  # still within the grace period
    clock.now = NOW + timedelta(days=10)
    assert store.sweep() == 1
    state = store.state_for(aliases.Token("PXPS", rec["alias_id"]), "someone-else")
    assert state.token_record is not None and state.token_record.meeting_uid == "uid-1"
    # the same meeting moved into the future brings the alias back
    bind(store, rec["alias_id"], "uid-1", days=20, seq=2)
    assert store.get(rec["alias_id"])["status"] == "bound"  # type: ignore[index]


def test_a_bound_meetings_organizer_is_known_to_the_rules_live_and_archived(make: Opener) -> None:
    clock = Clock()
    store = make(clock)
    rec = store.reserve("v", 6, "d")
    start = NOW + timedelta(days=1)
    action = Action(
        "bind", alias_id=rec["alias_id"], meeting_uid="uid-1", schedule=Schedule(start, start)
    )
    store.apply(action, {"name": "Standup", "organizer_email": "olga@example.com"})
    assert store.state_for(None, "uid-1").uid_record.organizer == "olga@example.com"  # type: ignore[union-attr]
    clock.now = NOW + timedelta(days=10)
    assert store.sweep() == 1
    store.close()
    again = make(clock)
    # a finished meeting is found by its token (moved into the future, it comes back)
    token = aliases.Token("PXPS", rec["alias_id"])
    assert again.state_for(token, "uid-1").token_record.organizer == "olga@example.com"  # type: ignore[union-attr]


def test_snapshot_is_a_tinydb_database_and_journals_are_dropped(tmp_path: Path) -> None:
    store = make_file(tmp_path)
    ids = [store.reserve("v", 6, "d")["alias_id"] for _ in range(10)]
    store.commit()
    store.compact()
    assert sorted(p.name for p in tmp_path.glob("journal.*.log")) == ["journal.2.log"]
    docs = TinyDB(tmp_path / "store.json").table("aliases").all()
    assert sorted(d["alias_id"] for d in docs) == sorted(ids)
    store.close()
    assert len(make_file(tmp_path)) == 10


def test_background_compaction_keeps_concurrent_writes(tmp_path: Path) -> None:
    store = make_file(tmp_path, compact_after=50)
    ids = []
    for _ in range(20):
        for _ in range(10):
            ids.append(store.reserve("v", 8, "d")["alias_id"])
        store.commit()
    store.close(compact=False)
    again = make_file(tmp_path)
    assert sorted(r["alias_id"] for r in again.records()) == sorted(ids)


def test_torn_journal_tail_is_ignored(tmp_path: Path) -> None:
    store = make_file(tmp_path)
    keep = store.reserve("v", 6, "d")
    store.commit()
    store.close(compact=False)
    journal = next(tmp_path.glob("journal.*.log"))
    with open(journal, "ab") as handle:
        handle.write(b'1234abcd {"op":"put","r":{"alias_id":"torn"')  # crash mid-line
    again = make_file(tmp_path)
    assert again.get(keep["alias_id"]) is not None and len(again) == 1


def _hundred(tmp_path: Path) -> tuple[Store, list[str]]:
    """A store with 100 reservations, each committed (acknowledged) on its own."""
    store = make_file(tmp_path)
    ids = []
    for _ in range(100):
        ids.append(store.reserve("v", 8, "d")["alias_id"])
        store.commit()
    return store, ids


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def test_a_damaged_line_in_the_middle_refuses_to_open_and_repair_salvages(
    tmp_path: Path,
) -> None:
    store, ids = _hundred(tmp_path)
    store.close(compact=False)
    [journal] = tmp_path.glob("journal.*.log")
    lines = journal.read_bytes().split(b"\n")
    lines[29] = lines[29][:20] + (b"X" if lines[29][20:21] != b"X" else b"Y") + lines[29][21:]
    journal.write_bytes(b"\n".join(lines))
    before = _files(tmp_path)
    with pytest.raises(StoreCorruptError, match="damaged line"):
        make_file(tmp_path)
    assert _files(tmp_path) == before  # nothing dropped, nothing rewritten
    assert check(tmp_path).damaged
    report = repair(tmp_path)
    assert report.damaged
    again = make_file(tmp_path)
    kept = {r["alias_id"] for r in again.records()}
    assert kept == set(ids) - {ids[29]}  # every record but the one on the damaged line
    assert list(tmp_path.glob("damaged-*/journal.*.log"))  # the evidence is kept


def test_junk_appended_to_the_live_journal_loses_nothing_acknowledged(tmp_path: Path) -> None:
    store, ids = _hundred(tmp_path)
    [journal] = tmp_path.glob("journal.*.log")
    with open(journal, "ab") as handle:
        handle.write(b"some junk a clumsy admin appended")  # no newline
    later = []
    for _ in range(50):
        later.append(store.reserve("v", 8, "d")["alias_id"])
        store.commit()  # acknowledged
    os.close(store._lock_fd)  # a crash: the process is gone, nothing is closed or compacted
    with pytest.raises(StoreCorruptError):
        Store(tmp_path)
    repair(tmp_path)
    again = make_file(tmp_path)
    assert {r["alias_id"] for r in again.records()} == set(ids) | set(later)


def test_an_empty_or_damaged_snapshot_is_never_read_as_an_empty_store(tmp_path: Path) -> None:
    store, ids = _hundred(tmp_path)
    store.close()  # compacts into store.json
    snapshot = tmp_path / "store.json"
    good = snapshot.read_bytes()
    snapshot.write_bytes(b"")
    with pytest.raises(StoreCorruptError, match="empty or not JSON"):
        make_file(tmp_path)
    assert snapshot.read_bytes() == b""  # not overwritten
    # one byte changed inside one record: it parses, but its checksum names it
    at = good.index(ids[10].encode()) + 3
    snapshot.write_bytes(
        good[:at] + b"0" + good[at + 1 :]
        if good[at : at + 1] != b"0"
        else good[:at] + b"1" + good[at + 1 :]
    )
    with pytest.raises(StoreCorruptError, match="fail their checksum"):
        make_file(tmp_path)
    repair(tmp_path)
    again = make_file(tmp_path)
    assert {r["alias_id"] for r in again.records()} == set(ids) - {ids[10]}


def test_the_lock_is_on_the_directory_not_a_file(tmp_path: Path) -> None:
    store = make_file(tmp_path)
    for path in tmp_path.iterdir():
        if path.name == "lock":
            path.unlink()
    with pytest.raises(StoreInUseError):
        make_file(tmp_path)
    store.close()
    make_file(tmp_path).close()


def test_close_releases_the_lock_when_the_disk_fails(tmp_path: Path) -> None:
    store = make_file(tmp_path)
    store.reserve("v", 8, "d")

    def failing() -> None:  # (a full disk takes the writes back instead: test_storage_full.py)
        raise OSError(5, "Input/output error")

    store._journal.sync = failing  # type: ignore[method-assign]
    with pytest.raises(StoreBrokenError):
        store.commit()
    with pytest.raises(StoreBrokenError):
        store.reserve("v", 8, "d")  # memory may be ahead of disk: no more use
    store.close()  # does not raise, releases the lock
    again = make_file(tmp_path)  # not "in use by another process"
    assert len(again) <= 1  # never acknowledged: it may or may not have reached the disk


def test_a_write_that_cannot_be_encoded_changes_nothing(tmp_path: Path) -> None:
    store = make_file(tmp_path)
    rec = store.reserve("v", 8, "d")
    store.commit()
    with pytest.raises(TypeError):
        bind(store, rec["alias_id"], seq=10**30)  # JSON cannot hold it
    assert store.get(rec["alias_id"])["status"] == "reserved"  # type: ignore[index]
    bind(store, rec["alias_id"], seq=1)
    store.commit()
    assert store.get(rec["alias_id"])["sequence"] == 1  # type: ignore[index]


def test_a_journal_cut_short_after_it_was_sealed_is_refused(tmp_path: Path) -> None:
    store, _ = _hundred(tmp_path)
    store.close(compact=False)
    make_file(tmp_path).close(compact=False)  # the second open seals the first journal
    first = tmp_path / "journal.1.log"
    data = first.read_bytes()
    first.write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreCorruptError, match="cut short"):
        make_file(tmp_path)


def test_replaying_a_journal_twice_is_harmless(tmp_path: Path) -> None:
    store = make_file(tmp_path)
    rec = store.reserve("v", 6, "d")
    bind(store, rec["alias_id"])
    store.commit()
    store.close(compact=False)
    journal = next(tmp_path.glob("journal.*.log"))
    (tmp_path / "journal.0.log").write_bytes(journal.read_bytes())  # as if compaction died
    again = make_file(tmp_path)
    assert len(again) == 1 and again.get(rec["alias_id"])["status"] == "bound"  # type: ignore[index]


def test_the_admin_lookup_finds_an_alias_in_every_form_a_node_dials_it(tmp_path: Path) -> None:
    """One rule (aliases.normalise) for the admin's lookup and the policy index: whatever form
    finds a room for a node finds the record for an admin."""
    store = make_file(tmp_path)
    rec = store.reserve("vmr", 6, "Video.Example.com")
    index = AliasIndex()
    settings = RoomSettings("alpha", timedelta(0), timedelta(0))
    index.publish([Room(rec["alias_id"], rec["alias"], rec["numeric_alias"], "bound", settings)])
    forms = [
        "<SIP:" + rec["alias"].upper() + ";transport=tls>",
        "sips:" + rec["alias"],
        "h323:" + rec["numeric_alias"],
        "tel:" + rec["numeric_alias"],
        " " + rec["numeric_alias"].upper() + " ",
    ]
    for form in forms:
        assert store.by_alias(form) == rec, form
        room = index.lookup(aliases.normalise(form))
        assert room is not None and room.alias_id == rec["alias_id"], form
    assert store.by_alias("1234:" + rec["numeric_alias"]) is None  # digits are no scheme


@pytest.mark.slow
def test_sigkill_mid_write_never_loses_an_acknowledged_write(tmp_path: Path) -> None:
    """Kill a writer with SIGKILL at random points, many times; after each kill the store loads
    and holds every write the writer acknowledged (printed after commit)."""
    rng = random.Random(11)
    acknowledged: dict[str, str] = {}
    env = dict(os.environ, PYTHONPATH=str(HERE.parents[1]))
    for round_no in range(25):
        child = subprocess.Popen(
            [sys.executable, str(HERE / "store_writer.py"), str(tmp_path), str(round_no)],
            stdout=subprocess.PIPE,
            env=env,
        )
        time.sleep(rng.uniform(0.15, 0.5))
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate()
        for line in out.decode().splitlines():
            if line.count(" ") == 1:
                alias_id, status = line.split()
                acknowledged[alias_id] = status
        store = Store(tmp_path)
        for alias_id, status in acknowledged.items():
            record = store.get(alias_id)
            assert record is not None, f"round {round_no}: lost {alias_id}"
            assert record["status"] == status
        store.close(compact=round_no % 5 == 4)
    assert len(acknowledged) > 100
    numerics = [json.dumps(r["numeric_alias"]) for r in Store(tmp_path).records()]
    assert len(numerics) == len(set(numerics))  # no alias handed out twice


def _decide_and_apply(store: Store, meeting: Meeting) -> Decision:
    from vmrsched.rules.meetings import decide

    state = store.state_for(aliases.find_token(meeting.html_body), meeting.uid, ("v", 6, "d"))
    decision = decide(meeting, state, NOW)
    if decision.action.kind != "none":
        store.apply(decision.action, {"name": "n"})
        store.commit()
    return decision


def test_redelivered_messages_get_the_same_answer(tmp_path: Path) -> None:
    """Reprocessing after a crash is idempotent: same UID and SEQUENCE, same answer, same
    binding, including the organizer update of the placeholder path."""

    store = make_file(tmp_path)
    start = NOW + timedelta(days=1)
    tok = Meeting(
        uid="m-tok",
        method="REQUEST",
        start=start,
        end=start + timedelta(hours=1),
        html_body="TOK:-00000000-0000-4000-8000-0000000000aa#",
        correlation_id="c",
    )
    first = _decide_and_apply(store, tok)
    again = _decide_and_apply(store, tok)
    assert (first.reason, first.organizer_update) == ("new_single", True)
    assert (again.reason, again.organizer_update) == ("new_single", True)
    bound = store.by_meeting_uid("m-tok")
    assert bound is not None and len(store) == 1

    rec = store.reserve("v", 6, "d")
    plain = Meeting(
        uid="m-plain",
        method="REQUEST",
        start=start,
        end=start + timedelta(hours=1),
        html_body=f"PXPS:-{rec['alias_id']}#",
        correlation_id="c",
    )
    assert _decide_and_apply(store, plain).reason == "new_single"
    assert _decide_and_apply(store, plain).reason == "new_single"
    from dataclasses import replace

    moved = replace(
        plain, sequence=1, start=start + timedelta(hours=2), end=start + timedelta(hours=3)
    )
    assert _decide_and_apply(store, moved).reason == "edited_single"
    assert _decide_and_apply(store, moved).reason == "edited_single"
    # the same times again under a new SEQUENCE (an informational update): nothing to answer
    assert _decide_and_apply(store, replace(moved, sequence=2)).reason == "unchanged"
    assert _decide_and_apply(store, plain).reason == "outdated"


def test_a_damaged_document_key_loses_only_that_document(tmp_path: Path) -> None:
    """A flipped digit can give a document the key of another one; parsing keeps only the
    later of the two, so repair reads the documents from the text, one by one."""
    store, ids = _hundred(tmp_path)
    store.close()
    snapshot = tmp_path / "store.json"
    raw = snapshot.read_bytes()
    raw = raw.replace(b'"12":{"alias_id"', b'"11":{"alias_id"', 1)  # a key now used twice
    snapshot.write_bytes(raw)
    with pytest.raises(StoreCorruptError):
        make_file(tmp_path)
    repair(tmp_path)
    again = make_file(tmp_path)
    assert {r["alias_id"] for r in again.records()} == set(ids)  # the record itself was intact


def test_a_new_journal_is_born_with_the_seals_of_the_ones_before_it(tmp_path: Path) -> None:
    """The seal is written with the file (temporary file, fsync, rename): a kill can no longer
    leave an empty new journal beside an unsealed one whose later cut would go unnoticed."""
    from vmrsched.store.journal import Journal, scan

    path = tmp_path / "journal.7.log"
    journal = Journal(path, [{"op": "seal", "gen": 6, "entries": 3}])
    assert journal.entries == 1 and journal.pending == 0
    journal.close()
    assert [e["op"] for e in scan(path).entries] == ["seal"]
    assert not list(tmp_path.glob("*.new"))
    store = Store(tmp_path / "store")
    store.reserve("81", 6, "video.example.com")
    store.commit()
    store.close(compact=False)
    store = Store(tmp_path / "store")  # a new journal, sealing the first
    store.close(compact=False)
    journals = sorted((tmp_path / "store").glob("journal.*.log"))
    assert scan(journals[-1]).entries[0]["op"] == "seal"


def test_a_restart_with_nothing_written_leaves_the_files_as_they_were(tmp_path: Path) -> None:
    """A clean close leaves journals holding only seals: opening again creates no journal (the
    next one waits for the first write, and is born with the seals), and closing again
    compacts nothing."""
    from vmrsched.store.journal import scan

    store = make_file(tmp_path)
    first = store.reserve("v", 8, "d")
    store.commit()
    store.close()
    before = snapshot(tmp_path)
    for _ in range(3):
        again = make_file(tmp_path)
        assert again.get(first["alias_id"]) is not None
        again.close()
    assert snapshot(tmp_path) == before
    again = make_file(tmp_path)
    second = again.reserve("v", 8, "d")
    again.commit()
    [live] = set(snapshot(tmp_path)) - set(before)
    sealed = {e["gen"] for e in scan(tmp_path / live).entries if e["op"] == "seal"}
    assert {f"journal.{gen}.log" for gen in sealed} >= {
        name for name in before if name.startswith("journal.")
    }
    os.close(again._lock_fd)  # a crash: nothing closed or compacted
    crashed = make_file(tmp_path)
    assert {r["alias_id"] for r in crashed.records()} == {first["alias_id"], second["alias_id"]}
    crashed.close()


def test_a_fresh_store_creates_no_journal_until_written(tmp_path: Path) -> None:
    make_file(tmp_path).close()
    assert not list(tmp_path.glob("journal.*")) and not (tmp_path / "store.json").exists()
    store = make_file(tmp_path)
    rec = store.reserve("v", 8, "d")
    store.commit()
    store.compact()  # then a journal sealing the first, and the snapshot
    store.close()
    assert make_file(tmp_path).get(rec["alias_id"]) is not None


def test_a_schedule_reads_back_the_same_whether_just_encoded_or_long_ago() -> None:
    start = datetime(2026, 12, 1, 9, tzinfo=UTC)
    first = Schedule(start, start + timedelta(hours=1), "FREQ=WEEKLY;COUNT=3")
    raw = encode_schedule(first)
    assert decode_schedule(raw) is first  # just encoded: not decoded again
    for i in range(5000):  # more than the memo keeps
        encode_schedule(
            Schedule(start + timedelta(minutes=i), start + timedelta(hours=1, minutes=i))
        )
    again = decode_schedule(raw)
    assert again == first and again is not first
    assert decode_schedule(json.loads(raw)) == first


def test_the_collector_stays_off_while_any_store_loads_and_comes_back_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gc
    import threading

    release = {name: threading.Event() for name in ("a", "b")}
    loading = {name: threading.Event() for name in ("a", "b")}
    load = Store._load

    def held_load(self: Store) -> None:
        loading[self.directory.name].set()
        release[self.directory.name].wait(10)
        load(self)

    monkeypatch.setattr(Store, "_load", held_load)
    opened: list[Store] = []
    threads = [
        threading.Thread(target=lambda n=name: opened.append(Store(tmp_path / n)))
        for name in ("a", "b")
    ]
    assert gc.isenabled()
    for thread in threads:
        thread.start()
    for event in loading.values():
        assert event.wait(10)
    assert not gc.isenabled()
    release["a"].set()
    threads[0].join(10)
    assert not gc.isenabled()  # b still loading
    release["b"].set()
    threads[1].join(10)
    assert gc.isenabled() and len(opened) == 2
    for store in opened:
        store.close()


def test_open_reservations_are_counted_per_user_and_rebuilt_at_open(tmp_path: Path) -> None:
    """The allocator's quota asks the store how many reservations a user holds that are not in
    a meeting yet: an index kept with every write, counted again from the files at open."""
    clock = Clock()
    store = make_file(tmp_path, clock, reservation_ttl=timedelta(days=30))
    olga = [store.reserve("v", 6, "d", user="olga") for _ in range(4)]
    store.reserve("v", 6, "d", user="ivan")
    store.reserve("v", 6, "d")  # no user: not counted
    assert [store.open_reservations(u) for u in ("olga", "ivan", "nobody")] == [4, 1, 0]
    bind(store, olga[0]["alias_id"])  # in a meeting: no longer open
    assert store.get(olga[0]["alias_id"])["user"] == "olga"  # type: ignore[index]
    store.delete(olga[1]["alias_id"], "released")
    assert store.open_reservations("olga") == 2
    store.commit()
    store.close(compact=False)  # read back from the journal
    again = make_file(tmp_path, clock, reservation_ttl=timedelta(days=30))
    assert [again.open_reservations(u) for u in ("olga", "ivan")] == [2, 1]
    again.sweep()  # archives the released one: the count stays
    again.close()  # and from the snapshot
    again = make_file(tmp_path, clock, reservation_ttl=timedelta(days=30))
    assert [again.open_reservations(u) for u in ("olga", "ivan")] == [2, 1]
    clock.now = NOW + timedelta(days=31)
    again.sweep()  # the unused ones expire
    assert [again.open_reservations(u) for u in ("olga", "ivan")] == [0, 0]


def test_aliases_taken_counts_archived_ones_that_are_never_drawn_again(tmp_path: Path) -> None:
    clock = Clock()
    store = make_file(tmp_path, clock)
    records = [store.reserve("v", 6, "d") for _ in range(5)]
    bind(store, records[0]["alias_id"], days=1)
    store.delete(records[1]["alias_id"], "released")
    assert store.aliases_taken() == 5
    clock.now = NOW + timedelta(days=10)
    assert store.sweep() == 2  # the released one, and the finished meeting
    assert store.aliases_taken() == 5
    bind(store, records[0]["alias_id"], days=20, seq=2)  # brought back from the archive
    assert store.aliases_taken() == 5
    store.close()
    assert make_file(tmp_path, clock).aliases_taken() == 5


def _booked_then_deleted(tmp_path: Path) -> tuple[Store, dict[str, Any]]:
    """A store of 20 reservations and one booked meeting whose alias an admin deleted."""
    store, _ = _hundred_of(tmp_path, 20)
    record = store.reserve("v", 8, "d")
    bind(store, record["alias_id"], uid="uid-deleted-meeting")
    store.delete(record["alias_id"], "deleted by admin token")
    store.commit()
    found = store.get(record["alias_id"])
    assert found is not None
    return store, found


def _hundred_of(tmp_path: Path, count: int) -> tuple[Store, list[str]]:
    store = make_file(tmp_path)
    ids = [store.reserve("v", 8, "d")["alias_id"] for _ in range(count)]
    store.commit()
    return store, ids


def _lost_lines(lines: list[str]) -> list[str]:
    return [line.strip() for line in lines if line.strip().startswith(("lost:", "damaged:"))]


def test_check_and_repair_name_a_lost_snapshot_record_by_what_it_still_says(
    tmp_path: Path,
) -> None:
    """docs/guarantees.md: only the records on damaged documents are lost, "and the report
    names them": by alias, alias id and meeting UID as the damaged text still reads (probably:
    it failed its checksum), not only by document number."""
    store, deleted = _booked_then_deleted(tmp_path)
    store.close()  # compacted into store.json
    snapshot = tmp_path / "store.json"
    raw = snapshot.read_text()
    at = raw.index('"created":', raw.index(f'"alias_id":"{deleted["alias_id"]}"')) + 12
    snapshot.write_text(raw[:at] + ("0" if raw[at] != "0" else "1") + raw[at + 1 :])
    for report in (check(tmp_path), repair(tmp_path)):
        [named] = _lost_lines(report.lines())
        assert named.startswith("lost: document ")
        assert f"probably alias {deleted['alias']}" in named
        assert f"alias id {deleted['alias_id']}" in named
        assert "meeting uid-deleted-meeting" in named and "deleted" in named


def test_a_snapshot_document_that_no_longer_decodes_is_named_from_its_text(
    tmp_path: Path,
) -> None:
    store, deleted = _booked_then_deleted(tmp_path)
    store.close()
    snapshot = tmp_path / "store.json"
    raw = snapshot.read_text()
    at = raw.index('"status":', raw.index(f'"alias_id":"{deleted["alias_id"]}"'))
    snapshot.write_text(raw[:at] + "\x00" + raw[at + 1 :])  # the document no longer parses
    [named] = _lost_lines(check(tmp_path).lines())
    assert named.startswith("lost: document ")
    assert f"probably alias {deleted['alias']}" in named and "uid-deleted-meeting" in named


def test_a_damaged_journal_line_is_named_and_said_lost_or_kept_in_another_copy(
    tmp_path: Path,
) -> None:
    store, ids = _hundred(tmp_path)
    bind(store, ids[50], uid="uid-changed")
    store.commit()  # the journal's last line: ids[50] bound
    store.close(compact=False)
    [journal] = tmp_path.glob("journal.*.log")
    lines = journal.read_bytes().split(b"\n")
    for number in (29, len(lines) - 2):
        lines[number] = lines[number][:20] + b"\x01" + lines[number][21:]
    journal.write_bytes(b"\n".join(lines))
    named = _lost_lines(check(tmp_path).lines())
    assert len(named) == 2
    assert named[0].startswith("lost: line 30") and f"alias id {ids[29]}" in named[0]
    assert named[1].startswith(f"damaged: line {len(lines) - 1}")
    assert f"alias id {ids[50]}" in named[1] and "uid-changed" in named[1]
    assert "another copy of it reads and is kept" in named[1]


def test_damage_holding_no_record_is_reported_without_a_name(tmp_path: Path) -> None:
    """A snapshot cut before its first record, and a damaged journal line that held no
    record: the report says what it can (nothing names a record), and repair goes on."""
    store, _ = _hundred_of(tmp_path, 3)
    store.close()
    snapshot = tmp_path / "store.json"
    snapshot.write_bytes(snapshot.read_bytes()[:12])  # '{"aliases":{' and no record
    [journal] = tmp_path.glob("journal.*.log")
    journal.write_bytes(b"0000000x not an entry\n" + journal.read_bytes())
    report = repair(tmp_path)
    assert report.damaged
    assert "lost: line 1, nothing in it still names a record" in _lost_lines(report.lines())
