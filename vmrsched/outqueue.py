"""The notifier's durable queue of outgoing messages (a journal of adds and dones).

A meeting's inbox item is marked handled only after its reply is in this queue and fsynced, so a
crash can at worst send a reply twice, never lose one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from vmrsched.journal import Journal, read_entries
from vmrsched.mailbox.base import Outgoing

_NAME = re.compile(r"^outgoing\.(\d+)\.log$")


class OutQueue:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._pending: dict[str, Outgoing] = {}
        gens = sorted(
            int(m.group(1)) for p in self.directory.iterdir() if (m := _NAME.match(p.name))
        )
        for gen in gens:
            for entry in read_entries(self._path(gen)):
                if entry["op"] == "add":
                    message = Outgoing.from_json(entry["m"])
                    self._pending[message.id] = message
                elif entry["op"] == "done":
                    self._pending.pop(entry["id"], None)
        self._old = gens
        self._gen = (gens[-1] if gens else 0) + 1
        self._journal = Journal(self._path(self._gen))
        if self._pending:
            # carry what is still pending into the new journal so old ones can go
            for message in self._pending.values():
                self._journal.append({"op": "add", "m": message.to_json()})
        self._journal.sync()
        self._drop_old()

    def _path(self, gen: int) -> Path:
        return self.directory / f"outgoing.{gen}.log"

    def _drop_old(self) -> None:
        for gen in self._old:
            self._path(gen).unlink(missing_ok=True)
        self._old = []

    def add(self, messages: Iterable[Outgoing]) -> None:
        """Queue messages durably (returns after fsync)."""
        for message in messages:
            self._pending[message.id] = message
            self._journal.append({"op": "add", "m": message.to_json()})
        self._journal.sync()

    def done(self, ids: Iterable[str]) -> None:
        """Forget delivered messages. Not fsynced: losing a 'done' only repeats a delivery."""
        for message_id in ids:
            if self._pending.pop(message_id, None) is not None:
                self._journal.append({"op": "done", "id": message_id})
        if not self._pending and self._journal.entries > 10_000:
            self._rotate()

    def _rotate(self) -> None:
        self._journal.close()
        self._old = [self._gen]
        self._gen += 1
        self._journal = Journal(self._path(self._gen))
        self._journal.sync()
        self._drop_old()

    def pending(self) -> list[Outgoing]:
        return list(self._pending.values())

    def __len__(self) -> int:
        return len(self._pending)

    def close(self) -> None:
        self._journal.close()
