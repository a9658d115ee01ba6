"""Moving everything but the records between the file backend and PostgreSQL (`vmrsched store
migrate`, beside transfer.py's records): each integration's out-queue (seen ids, queued and
failed messages), decisions log, delegated token cache and Graph state, and the service-wide
user sign-in sessions and their key.

This module is the database's side, and the tallies both sides are compared by: counts of each
part and one SHA-256 over a canonical form (sorted-key JSON, in the order that matters: the
queue's order, the failures' order, the log's order). The file side is read and written by the
service (service/storage.py), which holds the file formats' owners. Into the database an
integration's state is written and read back in one transaction, committed only when the
tallies agree."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
from psycopg.types.json import Jsonb

from vmrsched.outgoing import Outgoing
from vmrsched.store.outqueue import Failed, Queued


def _when(at: float) -> datetime:
    return datetime.fromtimestamp(at, UTC)


def _micros(at: float) -> int:
    """A time as both backends keep it (the database: microseconds)."""
    return round(_when(at).timestamp() * 1_000_000)


def _canonical(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def _jsonb(value: Any) -> Jsonb:
    return Jsonb(value, dumps=lambda v: orjson.dumps(v).decode())


@dataclass
class QueueState:
    seen: dict[str, float] = field(default_factory=dict)  # id -> when first queued
    queued: list[Queued] = field(default_factory=list)  # in queue order
    failed: list[Failed] = field(default_factory=list)  # in the order they failed

    def completed(self) -> QueueState:
        """Every queued and failed id seen (the database's keys require it; a file queue may
        have forgotten the seen id of a failure older than SEEN_DAYS)."""
        seen = dict(self.seen)
        for item in self.queued:
            seen.setdefault(item.message.id, item.at)
        for gone in self.failed:
            seen.setdefault(gone.message.id, gone.at)
        return QueueState(seen, list(self.queued), list(self.failed))


@dataclass
class IntegrationState:
    queue: QueueState = field(default_factory=QueueState)
    decisions: list[dict[str, Any]] = field(default_factory=list)  # oldest first
    token_cache: tuple[str, dict[str, str] | None] | None = None  # (msal's cache, identity)
    graph_state: dict[str, Any] | None = None


@dataclass(frozen=True)
class StateTally:
    seen: int
    queued: int
    failed: int
    decisions: int
    token_cache: int
    graph_state: int
    checksum: str

    def __str__(self) -> str:
        return (
            f"queue {self.seen} seen, {self.queued} queued, {self.failed} failed; "
            f"{self.decisions} decisions; {self.token_cache} token cache; "
            f"{self.graph_state} Graph state; sha256 {self.checksum[:16]}"
        )


def tally_state(state: IntegrationState) -> StateTally:
    queue = state.queue.completed()
    digest = hashlib.sha256()
    for message_id in sorted(queue.seen):
        digest.update(b"S" + message_id.encode() + b"\n")
    for item in queue.queued:
        digest.update(b"Q" + _canonical(item.message.to_json()) + b"\n")
    for gone in queue.failed:
        digest.update(
            b"F" + _canonical([gone.message.to_json(), gone.reason, _micros(gone.at)]) + b"\n"
        )
    for entry in state.decisions:
        digest.update(b"D" + _canonical(entry) + b"\n")
    if state.token_cache is not None:
        digest.update(b"T" + _canonical(list(state.token_cache)) + b"\n")
    if state.graph_state is not None:
        digest.update(b"G" + _canonical(state.graph_state) + b"\n")
    return StateTally(
        len(queue.seen),
        len(queue.queued),
        len(queue.failed),
        len(state.decisions),
        int(state.token_cache is not None),
        int(state.graph_state is not None),
        digest.hexdigest(),
    )


# --- one integration's state in the database ------------------------------------------------


def read_state(conn: psycopg.Connection[Any], integration: str) -> IntegrationState:
    state = IntegrationState()
    with conn.cursor() as cur:
        cur.execute(
            "SELECT id, seen FROM vmrsched_outqueue_seen WHERE integration = %s ORDER BY seen, id",
            (integration,),
        )
        state.queue.seen = {str(i): at.timestamp() for i, at in cur.fetchall()}
        cur.execute(
            "SELECT message, queued FROM vmrsched_outqueue WHERE integration = %s ORDER BY seq",
            (integration,),
        )
        state.queue.queued = [Queued(Outgoing.from_json(m), at.timestamp()) for m, at in cur]
        cur.execute(
            "SELECT message, reason, failed FROM vmrsched_outqueue_failed"
            " WHERE integration = %s ORDER BY seq",
            (integration,),
        )
        state.queue.failed = [
            Failed(Outgoing.from_json(m), str(reason), at.timestamp()) for m, reason, at in cur
        ]
        cur.execute(
            "SELECT entry FROM vmrsched_decisions WHERE integration = %s ORDER BY seq",
            (integration,),
        )
        state.decisions = [dict(row[0]) for row in cur.fetchall()]
        cur.execute(
            "SELECT cache, identity FROM vmrsched_token_caches WHERE integration = %s",
            (integration,),
        )
        row = cur.fetchone()
        if row is not None:
            identity = row[1]
            state.token_cache = (
                str(row[0]),
                {str(k): str(v) for k, v in identity.items()}
                if isinstance(identity, dict)
                else None,
            )
        cur.execute("SELECT state FROM vmrsched_graph_state WHERE integration = %s", (integration,))
        row = cur.fetchone()
        if row is not None:
            state.graph_state = dict(row[0])
    return state


def held_state(conn: psycopg.Connection[Any], integration: str) -> list[str]:
    """What of an integration's state the database holds already (nothing: [])."""
    held = []
    for table, what in (
        ("vmrsched_outqueue_seen", "out-queue"),
        ("vmrsched_decisions", "decisions"),
        ("vmrsched_token_caches", "token cache"),
        ("vmrsched_graph_state", "Graph state"),
    ):
        row = conn.execute(
            f"SELECT EXISTS (SELECT 1 FROM {table} WHERE integration = %s)",  # our table names
            (integration,),
        ).fetchone()
        if row is not None and row[0]:
            held.append(what)
    return held


def write_state(conn: psycopg.Connection[Any], integration: str, state: IntegrationState) -> None:
    """Replace the integration's state in the database with `state` (inside the caller's
    transaction: nothing is fenced; every instance is stopped while moving)."""
    queue = state.queue.completed()
    with conn.cursor() as cur:
        for table in (
            "vmrsched_outqueue",
            "vmrsched_outqueue_failed",
            "vmrsched_outqueue_seen",
            "vmrsched_decisions",
            "vmrsched_token_caches",
            "vmrsched_graph_state",
        ):
            cur.execute(f"DELETE FROM {table} WHERE integration = %s", (integration,))
        cur.executemany(
            "INSERT INTO vmrsched_outqueue_seen (integration, id, seen) VALUES (%s, %s, %s)",
            [(integration, i, _when(at)) for i, at in queue.seen.items()],
        )
        cur.executemany(
            "INSERT INTO vmrsched_outqueue (integration, id, message, queued)"
            " VALUES (%s, %s, %s, %s)",
            [
                (integration, q.message.id, _jsonb(q.message.to_json()), _when(q.at))
                for q in queue.queued
            ],
        )
        cur.executemany(
            "INSERT INTO vmrsched_outqueue_failed (integration, id, message, reason, failed)"
            " VALUES (%s, %s, %s, %s, %s)",
            [
                (integration, f.message.id, _jsonb(f.message.to_json()), f.reason, _when(f.at))
                for f in queue.failed
            ],
        )
        cur.executemany(
            "INSERT INTO vmrsched_decisions (integration, entry) VALUES (%s, %s)",
            [(integration, _jsonb(entry)) for entry in state.decisions],
        )
        now = datetime.now(UTC)
        if state.token_cache is not None:
            cache, identity = state.token_cache
            cur.execute(
                "INSERT INTO vmrsched_token_caches (integration, cache, identity, written)"
                " VALUES (%s, %s, %s, %s)",
                (integration, cache, _jsonb(identity) if identity is not None else None, now),
            )
        if state.graph_state is not None:
            cur.execute(
                "INSERT INTO vmrsched_graph_state (integration, state, written)"
                " VALUES (%s, %s, %s)",
                (integration, _jsonb(state.graph_state), now),
            )


# --- the user sign-in's sessions and key, service-wide ----------------------------------------


@dataclass
class SignInState:
    key: str | None = None  # the Fernet key the refresh tokens are encrypted with
    sessions: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)


@dataclass(frozen=True)
class SignInTally:
    sessions: int
    key: int
    checksum: str

    def __str__(self) -> str:
        return f"{self.sessions} sessions; {self.key} key; sha256 {self.checksum[:16]}"


def tally_sign_ins(state: SignInState, plain: Callable[[str], str]) -> SignInTally:
    """Counts and a checksum over every session, its refresh token as what it decrypts to
    (`plain`: the key may differ between the sides, the tokens may not)."""
    digest = hashlib.sha256()
    count = 0
    for integration in sorted(state.sessions):
        for token_digest, entry in sorted(state.sessions[integration].items()):
            count += 1
            shown = dict(entry)
            refresh = str(shown.get("refresh", ""))
            shown["refresh"] = hashlib.sha256(plain(refresh).encode()).hexdigest()
            digest.update(_canonical([integration, token_digest, shown]) + b"\n")
    return SignInTally(count, int(state.key is not None), digest.hexdigest())


def read_sessions(conn: psycopg.Connection[Any]) -> dict[str, dict[str, dict[str, Any]]]:
    sessions: dict[str, dict[str, dict[str, Any]]] = {}
    for integration, token_digest, entry in conn.execute(
        "SELECT integration, digest, entry FROM vmrsched_user_sessions"
    ):
        sessions.setdefault(str(integration), {})[str(token_digest)] = dict(entry)
    return sessions


def write_sessions(
    conn: psycopg.Connection[Any], sessions: dict[str, dict[str, dict[str, Any]]]
) -> None:
    """Add (or replace) these sessions, inside the caller's transaction."""
    now = datetime.now(UTC)
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO vmrsched_user_sessions (integration, digest, entry, touched)"
            " VALUES (%s, %s, %s, %s) ON CONFLICT (integration, digest)"
            " DO UPDATE SET entry = EXCLUDED.entry, touched = EXCLUDED.touched",
            [
                (integration, token_digest, _jsonb(entry), now)
                for integration, kept in sessions.items()
                for token_digest, entry in kept.items()
            ],
        )
