"""A store as an old backup would have it: what recovery is for."""

from __future__ import annotations

import shutil
from pathlib import Path

from vmrsched.store import Record, Store


def restore_without(store_dir: Path, uid: str) -> Record:
    """Replace the file store in `store_dir` by the one a backup taken before meeting `uid` was
    booked would give back: every other live record as it is, that meeting's record never
    there (not deleted: a deleted one the store still knows, and recovery leaves alone).
    Returns the record that went missing."""
    old = Store(store_dir)
    try:
        lost = old.by_meeting_uid(uid)
        assert lost is not None, f"{uid} is not bound in {store_dir}"
    finally:
        old.close()
    lose_record(store_dir, lost["alias_id"])
    return lost


def lose_record(store_dir: Path, alias_id: str) -> None:
    """Replace the file store in `store_dir` by one that never held the record `alias_id`
    (whatever its state: bound, deleted), as `store repair` leaves a store whose document of
    it was damaged; every other live record kept as it is."""
    old = Store(store_dir)
    try:
        assert old.get(alias_id) is not None, f"{alias_id} is not in {store_dir}"
        kept = [dict(r) for r in old.records() if r["alias_id"] != alias_id]
    finally:
        old.close()
    shutil.rmtree(store_dir)
    restored = Store(store_dir)
    try:
        for record in kept:
            restored._put(record)
        restored.commit()
    finally:
        restored.close()
