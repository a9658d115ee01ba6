"""Every port of the state beside the records behaves the same on both backends: the decisions
log (newest first, bounded to the newest `keep`), the user sign-in's sessions and key, the
admins' console sessions (expiry, CSRF), the sign-ins in progress (one use, ten minutes), the
delegated token cache and the Graph state. The database's are also shared: what one instance's
store wrote, another's reads; the keys are made once however many instances ask at once. And
on the database the integration-owned writes are fenced: an instance that lost the lease (or
never held it) writes nothing."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from vmrsched.actors.context import Stores, file_stores
from vmrsched.mailbox.ews_auth import FileTokenCache, TokenCacheStore
from vmrsched.mailbox.graph_notifications import FileGraphState, GraphStateStore
from vmrsched.postgres import migrations
from vmrsched.postgres.leases import Lease, LeaseLost, Leases
from vmrsched.postgres.pool import Pool
from vmrsched.postgres.sessions import (
    DatabaseAdminSessions,
    DatabaseAttempts,
    DatabaseSessions,
    secret,
)
from vmrsched.service.runtime import database_stores
from vmrsched.signin import oidc
from vmrsched.store import OwnershipLostError, decisions

Connect = Callable[[], psycopg.Connection[Any]]


class Clock:
    def __init__(self) -> None:
        self.now = 1_900_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Kit:
    """One backend's stores, as an instance's service holds them."""

    backend: str
    stores: Stores
    tmp: Path
    held: dict[str, Lease]

    def token_cache(self, name: str) -> TokenCacheStore:
        made = self.stores.token_cache
        return made(name) if made is not None else FileTokenCache(self.tmp / "oauth" / name)

    def graph_state(self, name: str) -> GraphStateStore:
        made = self.stores.graph_state
        return made(name) if made is not None else FileGraphState(self.tmp / "graph" / name)


def lease_holder(connect: Connect, instance: str, held: dict[str, Lease]) -> Callable[[str], Lease]:
    def lease_of(name: str) -> Lease:
        lease = held.get(name)
        if lease is None:
            raise OwnershipLostError(f"{instance} holds no lease of {name}")
        return lease

    return lease_of


@pytest.fixture(params=["file", "postgresql"])
def kit(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Kit]:
    held: dict[str, Lease] = {}
    if request.param == "file":
        stores = file_stores(tmp_path)
    else:
        connect: Connect = request.getfixturevalue("connect")
        with connect() as conn:
            migrations.migrate(conn)
        lease = Leases(connect, "instance-a", 30).acquire("alpha")
        assert lease is not None
        held["alpha"] = lease
        stores = database_stores(connect, lease_holder(connect, "instance-a", held))
    try:
        yield Kit(request.param, stores, tmp_path, held)
    finally:
        stores.close()


def entries(first: int, count: int) -> list[dict[str, Any]]:
    return [
        {"time": f"2026-12-06T10:{n % 60:02d}:00+00:00", "subject": f"m{n}", "outcome": "declined"}
        for n in range(first, first + count)
    ]


# --- the decisions log --------------------------------------------------------------------


def test_decisions_read_newest_first_per_integration(kit: Kit) -> None:
    log = kit.stores.decisions.writer("alpha")
    log.append(entries(0, 3))
    log.append(entries(3, 2))
    log.close()
    assert [e["subject"] for e in kit.stores.decisions.read("alpha")] == [
        "m4",
        "m3",
        "m2",
        "m1",
        "m0",
    ]
    assert list(kit.stores.decisions.read("beta")) == []
    found = decisions.search_entries(kit.stores.decisions.read("alpha"), "m3 declined")
    assert [e["subject"] for e in found] == ["m3"]


def test_decisions_keep_the_newest_keep_once_twice_keep_are_held(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    keep = 5
    if kit.backend == "file":
        log: decisions.DecisionWriter = decisions.FileDecisions(kit.tmp, keep).writer("alpha")
    else:
        monkeypatch.setattr(kit.stores.decisions, "keep", keep)
        log = kit.stores.decisions.writer("alpha")
    log.append(entries(0, 9))
    assert len(list(kit.stores.decisions.read("alpha"))) == 9
    log.append(entries(9, 1))  # ten: twice keep
    subjects = [e["subject"] for e in kit.stores.decisions.read("alpha")]
    assert subjects == [f"m{n}" for n in range(9, 4, -1)]
    log.close()


def test_a_long_log_is_read_back_whole_across_pages(kit: Kit) -> None:
    log = kit.stores.decisions.writer("alpha")
    log.append(entries(0, 1234))
    log.close()
    read = [e["subject"] for e in kit.stores.decisions.read("alpha")]
    assert read == [f"m{n}" for n in range(1233, -1, -1)]


# --- the user sign-in's sessions and key ----------------------------------------------------


def test_sessions_are_kept_replaced_and_forgotten(kit: Kit) -> None:
    store = kit.stores.user_sessions
    assert store.get("alpha", "d1") is None
    store.put("alpha", "d1", {"email": "olga@example.com", "refresh": "", "verified": 1.0})
    store.put("beta", "d1", {"email": "bob@example.com", "refresh": "", "verified": 2.0})
    assert store.get("alpha", "d1") == {"email": "olga@example.com", "refresh": "", "verified": 1.0}
    store.put("alpha", "d1", {"email": "olga@example.com", "refresh": "x", "verified": 3.0})
    assert store.get("alpha", "d1") == {
        "email": "olga@example.com",
        "refresh": "x",
        "verified": 3.0,
    }
    store.delete("alpha", "d1")
    assert store.get("alpha", "d1") is None
    assert store.get("beta", "d1") is not None


def test_the_key_is_made_once_and_kept(kit: Kit) -> None:
    from cryptography.fernet import Fernet

    key = kit.stores.user_sessions.key()
    Fernet(key.encode())  # a usable key
    assert kit.stores.user_sessions.key() == key


# --- the admins' console sessions -----------------------------------------------------------


def admin_sessions(kit: Kit, clock: Clock) -> Any:
    if kit.backend == "file":
        from vmrsched.signin.admins import MemoryAdminSessions

        return MemoryAdminSessions(clock)
    assert isinstance(kit.stores.admin_sessions, DatabaseAdminSessions)
    return DatabaseAdminSessions(kit.stores.admin_sessions.pool, clock)


def test_a_console_session_names_who_opened_it_until_it_expires_or_ends(kit: Kit) -> None:
    clock = Clock()
    sessions = admin_sessions(kit, clock)
    sid = sessions.create("ada@example.com")
    other = sessions.create("bob@example.com")
    assert sessions.who(sid) == "ada@example.com"
    assert sessions.who("not-a-session") is None
    assert sessions.csrf(sid) == sessions.csrf(sid) != sessions.csrf(other)
    sessions.end(sid)
    assert sessions.who(sid) is None
    clock.now += 8 * 3600 + 1
    assert sessions.who(other) is None


# --- the sign-ins in progress ------------------------------------------------------------------


def test_an_attempt_is_taken_once(kit: Kit) -> None:
    attempts = kit.stores.attempts
    attempt = oidc.Attempt("alpha", "v" * 64, "n", time.time())
    attempts.put("state-1", attempt)
    assert attempts.take("unknown") is None
    assert attempts.take("state-1") == attempt
    assert attempts.take("state-1") is None


def test_an_attempt_past_ten_minutes_is_refused(kit: Kit) -> None:
    clock = Clock()
    store: oidc.AttemptStore
    if kit.backend == "file":
        store = oidc.MemoryAttempts(clock)
    else:
        assert isinstance(kit.stores.attempts, DatabaseAttempts)
        store = DatabaseAttempts(kit.stores.attempts.pool, clock)
    store.put("late", oidc.Attempt("alpha", "v", "n", clock.now))
    clock.now += oidc.PENDING_SECONDS + 1
    assert store.take("late") is None


def test_a_flood_of_attempts_keeps_the_newest_and_drops_the_oldest(kit: Kit) -> None:
    """Anyone can start sign-ins, from any number of addresses: the attempts kept are bounded,
    the oldest going first, so a flood neither grows the store nor turns away the next user."""
    clock = Clock()
    store: oidc.AttemptStore
    if kit.backend == "file":
        store = oidc.MemoryAttempts(clock, cap=3)
    else:
        assert isinstance(kit.stores.attempts, DatabaseAttempts)
        store = DatabaseAttempts(kit.stores.attempts.pool, clock, cap=3)
    for n in range(5):
        clock.now += 1
        store.put(f"state-{n}", oidc.Attempt("alpha", "v", "n", clock.now))
    assert [store.take(f"state-{n}") is not None for n in range(5)] == [False, False] + [True] * 3


# --- what the owner of an integration keeps: token cache, Graph state -------------------------


def test_a_token_cache_is_kept_with_whose_it_is_and_dropped(kit: Kit) -> None:
    cache = kit.token_cache("alpha")
    assert cache.load() == (None, None)
    identity = {"client_id": "app", "token_endpoint": "https://t", "username": "svc@x"}
    cache.save('{"RefreshToken": {}}', identity)
    assert cache.load() == ('{"RefreshToken": {}}', identity)
    cache.drop()
    assert cache.load() == (None, None)


def test_the_graph_state_is_kept(kit: Kit) -> None:
    state = kit.graph_state("alpha")
    assert state.load() == {}
    kept = {"delta_link": "https://graph/delta?$deltatoken=1", "subscription": {"id": "s1"}}
    state.save(kept)
    assert state.load() == kept


# --- shared between instances, and fenced ---------------------------------------------------


@pytest.fixture
def two(connect: Connect) -> Iterator[tuple[Stores, Stores, dict[str, Lease], dict[str, Lease]]]:
    with connect() as conn:
        migrations.migrate(conn)
    held_a: dict[str, Lease] = {}
    held_b: dict[str, Lease] = {}
    a = database_stores(connect, lease_holder(connect, "instance-a", held_a))
    b = database_stores(connect, lease_holder(connect, "instance-b", held_b))
    try:
        yield a, b, held_a, held_b
    finally:
        a.close()
        b.close()


def test_what_one_instance_keeps_another_reads(
    two: tuple[Stores, Stores, dict[str, Lease], dict[str, Lease]], connect: Connect
) -> None:
    a, b, held_a, _ = two
    lease = Leases(connect, "instance-a", 30).acquire("alpha")
    assert lease is not None
    held_a["alpha"] = lease
    a.decisions.writer("alpha").append(entries(0, 1))
    assert [e["subject"] for e in b.decisions.read("alpha")] == ["m0"]
    a.user_sessions.put("alpha", "d", {"email": "olga@example.com", "verified": 1.0})
    assert b.user_sessions.get("alpha", "d") == {"email": "olga@example.com", "verified": 1.0}
    assert a.user_sessions.key() == b.user_sessions.key()
    sid = a.admin_sessions.create("ada@example.com")
    assert b.admin_sessions.who(sid) == "ada@example.com"
    assert a.admin_sessions.csrf(sid) == b.admin_sessions.csrf(sid)
    a.attempts.put("s", oidc.Attempt("alpha", "v", "n", time.time()))
    assert b.attempts.take("s") is not None  # the callback reached the other instance
    assert a.attempts.take("s") is None  # and only once
    assert a.token_cache is not None and b.token_cache is not None
    a.token_cache("alpha").save("{}", {"username": "svc@x"})
    assert b.token_cache("alpha").load() == ("{}", {"username": "svc@x"})
    assert a.graph_state is not None and b.graph_state is not None
    a.graph_state("alpha").save({"delta_link": "d1"})
    assert b.graph_state("alpha").load() == {"delta_link": "d1"}


def test_instances_asking_for_a_key_at_once_all_get_the_one_that_was_made(
    connect: Connect,
) -> None:
    with connect() as conn:
        migrations.migrate(conn)
    got: list[bytes] = []
    start = threading.Barrier(6)

    def one() -> None:
        pool = Pool(connect)
        start.wait()
        got.append(secret(pool, "race-key"))
        pool.close()

    threads = [threading.Thread(target=one) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(got) == 6 and len(set(got)) == 1 and len(got[0]) == 32


def test_a_lost_lease_writes_nothing_of_the_integrations_state(
    two: tuple[Stores, Stores, dict[str, Lease], dict[str, Lease]], connect: Connect
) -> None:
    a, b, held_a, held_b = two
    leases_a = Leases(connect, "instance-a", 30)
    lease = leases_a.acquire("alpha")
    assert lease is not None
    held_a["alpha"] = lease
    writer = a.decisions.writer("alpha")
    writer.append(entries(0, 1))
    assert a.token_cache is not None and a.graph_state is not None
    a.token_cache("alpha").save("old", {"username": "svc@x"})
    a.graph_state("alpha").save({"delta_link": "old"})

    # instance A is paused past its lease; B takes the integration over
    with connect() as conn:
        conn.execute("UPDATE vmrsched_leases SET expires = clock_timestamp()")
    taken = Leases(connect, "instance-b", 30).acquire("alpha")
    assert taken is not None and taken.token == lease.token + 1
    held_b["alpha"] = taken

    with pytest.raises(LeaseLost):
        writer.append(entries(1, 1))
    with pytest.raises(LeaseLost):
        a.token_cache("alpha").save("stale", {"username": "svc@x"})
    with pytest.raises(LeaseLost):
        a.graph_state("alpha").save({"delta_link": "stale"})
    assert [e["subject"] for e in b.decisions.read("alpha")] == ["m0"]
    assert b.token_cache is not None and b.graph_state is not None
    assert b.token_cache("alpha").load()[0] == "old"
    assert b.graph_state("alpha").load() == {"delta_link": "old"}

    # the new owner writes; an instance that never held the lease writes nothing either
    b.decisions.writer("alpha").append(entries(1, 1))
    assert [e["subject"] for e in a.decisions.read("alpha")] == ["m1", "m0"]
    with pytest.raises(OwnershipLostError):
        a.decisions.writer("beta").append(entries(2, 1))
    assert list(a.decisions.read("beta")) == []


def test_the_session_store_cleans_up_sessions_unused_for_ninety_days(connect: Connect) -> None:
    with connect() as conn:
        migrations.migrate(conn)
    clock = Clock()
    pool = Pool(connect)
    try:
        store = DatabaseSessions(pool, clock)
        store.put("alpha", "old", {"email": "a@example.com"})
        clock.now += 91 * 86400
        store.put("alpha", "new", {"email": "b@example.com"})
        assert store.get("alpha", "old") is None
        assert store.get("alpha", "new") is not None
        sessions = DatabaseAdminSessions(pool, clock)
        gone = sessions.create("ada@example.com")
        clock.now += 9 * 3600
        sessions.create("bob@example.com")  # cleans the expired
        with connect() as conn:
            row = conn.execute("SELECT count(*) FROM vmrsched_admin_sessions").fetchone()
        assert row is not None and row[0] == 1
        assert sessions.who(gone) is None
    finally:
        pool.close()


def test_an_attempt_started_on_the_event_loop_is_found_wherever_its_callback_lands(
    two: tuple[Stores, Stores, dict[str, Lease], dict[str, Lease]],
) -> None:
    """On the loop the attempt is written behind the redirect; a callback reaching this
    instance waits for that write, one reaching another looks again a moment later."""
    a, b, _, _ = two

    async def redirect(state: str) -> None:
        a.attempts.put(state, oidc.Attempt("alpha", "v", "n", time.time()))

    asyncio.run(redirect("here"))
    assert a.attempts.take("here") is not None
    asyncio.run(redirect("there"))
    assert b.attempts.take("there") is not None
    assert a.attempts.take("there") is None
