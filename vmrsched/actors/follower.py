"""The policy index of the integrations other instances run, kept current from the shared
database, so that a Pexip node asking any instance about any alias gets the same answer.

An instance's own integrations are published by their allocators, after each commit. For the
others, `Follower` reads what changed since the highest change number it has seen (every write
of a record takes the next number: migration 3) twice a second, and everything once a minute
and whenever an integration starts being followed (given up here, or added by a reload), which
also catches a write that committed after a later-numbered one. Reads only: it never writes."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import psycopg

from vmrsched.actors.allocator import room_of, room_settings
from vmrsched.actors.inbox import Actor
from vmrsched.actors.ownership import SharedStorage
from vmrsched.config import IntegrationConfig
from vmrsched.pexip.policy import AliasIndex, Room

log = logging.getLogger("vmrsched.follower")

EVERY = 0.5  # seconds between reads of what changed
FULL_EVERY = 60.0  # seconds between reads of everything followed


class _Tick:
    pass


class Follower(Actor):
    def __init__(
        self,
        shared: SharedStorage,
        integrations: Callable[[], tuple[IntegrationConfig, ...]],
        index: AliasIndex,
        schedule: Callable[[float, Callable[[], None]], None],
        every: float = EVERY,
        full_every: float = FULL_EVERY,
    ) -> None:
        super().__init__()
        self.shared = shared
        self.integrations = integrations  # the configured ones (a reload changes them)
        self.index = index
        self.schedule = schedule
        self.every = every
        self.full_every = full_every
        self.followed: set[str] = set()
        self.cursor = 0  # the highest change number read
        self.last_full = 0.0
        self._conn: psycopg.Connection[Any] | None = None

    def on_start(self) -> None:
        self._tick()

    def on_stop(self) -> None:
        if self._conn is not None:
            self._conn.close()

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, _Tick):
            self._tick()
        return None

    def _tick(self) -> None:
        try:
            self._step()
        except psycopg.Error as exc:
            log.warning("following the shared database: %s", exc)
            if self._conn is not None:
                self._conn.close()
            self._conn = None
        finally:
            self.schedule(self.every, self._tell_tick)

    def _tell_tick(self) -> None:
        if self.actor_ref.is_alive():
            self.actor_ref.tell(_Tick())

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = self.shared.connect()
        return self._conn

    def _step(self) -> None:
        configs = {i.name: i for i in self.integrations()}
        now = [name for name in configs if not self.shared.owns(name)]
        started = [name for name in now if name not in self.followed]
        for name in self.followed - set(now):
            if name not in configs:  # removed by a reload
                self.index.drop(name)
        self.followed = set(now)
        if not now:
            return
        due = time.monotonic() - self.last_full >= self.full_every
        if due:
            self._load(now, configs)
            self.last_full = time.monotonic()
        elif started:
            self._load(started, configs)
        self._changes(now, configs)

    def _publish(self, rows: list[tuple[str, bool, dict[str, Any]]], configs: Any) -> None:
        rooms: list[Room] = []
        settings = {}
        for integration, archived, record in rows:
            if integration not in settings:
                settings[integration] = room_settings(configs[integration])
            rooms.append(room_of(record, settings[integration], archived=archived))  # type: ignore[arg-type]
        if rooms:
            self.index.publish(rooms)

    def _load(self, names: list[str], configs: dict[str, IntegrationConfig]) -> None:
        conn = self._connection()
        with conn.transaction():
            rows = conn.execute(
                "SELECT integration, archived, record, changed FROM vmrsched_records"
                " WHERE integration = ANY(%s)",
                (names,),
            ).fetchall()
        self._publish([(str(i), bool(a), r) for i, a, r, _ in rows], configs)
        for name in names:
            if not self.shared.owns(name):
                self.index.mark_loaded(name)
        if rows:
            self.cursor = max(self.cursor, max(int(c) for *_, c in rows))

    def _changes(self, names: list[str], configs: dict[str, IntegrationConfig]) -> None:
        conn = self._connection()
        with conn.transaction():
            rows = conn.execute(
                "SELECT integration, archived, record, changed FROM vmrsched_records"
                " WHERE changed > %s AND integration = ANY(%s) ORDER BY changed",
                (self.cursor, names),
            ).fetchall()
        if rows:
            self._publish([(str(i), bool(a), r) for i, a, r, _ in rows], configs)
            self.cursor = max(int(c) for *_, c in rows)
