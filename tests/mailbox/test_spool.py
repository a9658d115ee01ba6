"""The spool inbox's order: oldest first by the time an item was first seen waiting, without a
stat of the whole backlog on every poll, and an item replaced under its name read afresh."""

from __future__ import annotations

import os
from pathlib import Path

from tests import spoolkit
from vmrsched.mailbox.spool import SpoolMailbox


def _put(inbox: Path, name: str, mtime_ns: int, uid: str) -> None:
    data, _ = spoolkit.request(uid=uid, body="<p>PXPS:-x#</p>")
    tmp = inbox / f".{name}"
    tmp.write_bytes(data)
    os.utime(tmp, ns=(mtime_ns, mtime_ns))
    os.replace(tmp, inbox / name)


def test_oldest_first_by_first_sight_and_a_replaced_item_is_read_afresh(tmp_path: Path) -> None:
    spool = SpoolMailbox(tmp_path, "room")
    base = 1_700_000_000 * 10**9
    for i, name in enumerate(["c.ics", "a.ics", "b.ics"]):
        _put(spool.inbox, name, base + (2 - i) * 10**9, f"uid-{name}")
    assert [item.id for item in spool.fetch(2)] == ["b.ics", "a.ics"]

    spool.mark_handled("b.ics", replied=False)
    _put(spool.inbox, "d.ics", base - 10**9, "uid-d")  # arrives later, with an older time
    assert [item.id for item in spool.fetch(3)] == ["d.ics", "a.ics", "c.ics"]
    # replaced under its name (a new file): its own time counts, and its new content
    _put(spool.inbox, "d.ics", base + 10 * 10**9, "uid-d2")
    items = spool.fetch(3)
    assert [item.id for item in items] == ["a.ics", "c.ics", "d.ics"]
    assert items[2].meetings[0].uid == "uid-d2"
