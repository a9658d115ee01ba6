"""`vmrsched store migrate` moves everything the service keeps, not only the records: each
integration's out-queue (seen ids, queued and failed messages), decisions log, delegated token
cache and Graph state, and the user sign-in's sessions with their key, there and back, each
proved by counts and a checksum on both sides. `vmrsched failed` reads the database's queues on
the database backend."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography.fernet import Fernet

from tests.configs import spool_toml
from tests.store.test_outqueue import message
from vmrsched.config import DataLayout
from vmrsched.mailbox.ews_auth import FileTokenCache
from vmrsched.mailbox.graph_notifications import FileGraphState
from vmrsched.postgres import migrations
from vmrsched.postgres.outqueue import DatabaseOutQueue
from vmrsched.postgres.sessions import USER_KEY, fernet_key, raw_key
from vmrsched.service.runtime import database_stores
from vmrsched.signin.users import FileSessions
from vmrsched.store import decisions, outqueue
from vmrsched.store.outqueue import OutQueue

ROOT = Path(__file__).resolve().parents[2]
Connect = Callable[[], psycopg.Connection[Any]]
IDENTITY = {"client_id": "app", "token_endpoint": "https://login/t", "username": "svc@example.com"}
ENTRIES = [{"time": f"2026-12-0{n}T09:00:00+00:00", "subject": f"m{n}"} for n in range(1, 6)]


def run(config: Path, dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmrsched", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "VMRSCHED_DSN": dsn},
        timeout=120,
    )


def write_config(tmp: Path, backend: str) -> Path:
    path = tmp / f"{backend}.toml"
    path.write_text(
        spool_toml(tmp / "data", name="alpha")
        + f'\n[storage]\nbackend = "{backend}"\ndsn_env = "VMRSCHED_DSN"\n'
    )
    return path


def fill(data: Path) -> str:
    """A data directory with one of everything; the session's refresh token in plain text."""
    layout = DataLayout(data)
    queue = OutQueue(layout.queue("alpha"))
    queue.add([message("sent"), message("waiting"), message("refused")])
    queue.done(["sent"])
    queue.fail("refused", "the organizer's meeting is gone")
    queue.close()
    log = decisions.FileDecisions(data).writer("alpha")
    log.append(ENTRIES)
    log.close()
    sessions = FileSessions(data)
    key = sessions.key()
    sessions.put(
        "alpha",
        "digest-1",
        {
            "email": "olga@example.com",
            "refresh": Fernet(key.encode()).encrypt(b"refresh-token-1").decode(),
            "verified": 1_900_000_000.0,
        },
    )
    FileTokenCache(layout.oauth("alpha")).save('{"RefreshToken": {"x": {}}}', IDENTITY)
    FileGraphState(layout.graph("alpha")).save({"delta_link": "https://graph/delta?t=1"})
    return key


def test_everything_moves_there_and_back(tmp_path: Path, dsn: str, connect: Connect) -> None:
    data = tmp_path / "data"
    key = fill(data)
    files = write_config(tmp_path, "file")

    done = run(files, dsn, "store", "migrate", "--to", "postgresql")
    assert done.returncode == 0, done.stderr
    line = "queue 3 seen, 1 queued, 1 failed; 5 decisions; 1 token cache; 1 Graph state"
    assert f"alpha: {line}" in done.stdout and f"-> arrived: {line}" in done.stdout
    assert "sign-ins: 1 sessions; 1 key" in done.stdout

    # what the instances now read from the database
    queue = DatabaseOutQueue(connect, "alpha")
    queued, failed = queue.contents()
    assert [q.message.id for q in queued] == ["waiting"]
    assert [(f.message.id, f.reason) for f in failed] == [
        ("refused", "the organizer's meeting is gone")
    ]
    assert queue.seen("sent")  # delivered: never queued again
    queue.close()
    stores = database_stores(connect, None)
    try:
        assert [e["subject"] for e in stores.decisions.read("alpha")] == [
            "m5",
            "m4",
            "m3",
            "m2",
            "m1",
        ]
        entry = stores.user_sessions.get("alpha", "digest-1")
        assert entry is not None and entry["email"] == "olga@example.com"
        assert stores.user_sessions.key() == key  # the key went along with its sessions
        assert stores.token_cache is not None and stores.graph_state is not None
        assert stores.token_cache("alpha").load() == ('{"RefreshToken": {"x": {}}}', IDENTITY)
        assert stores.graph_state("alpha").load() == {"delta_link": "https://graph/delta?t=1"}
    finally:
        stores.close()

    # the database backend's `vmrsched failed` lists the failure from the database
    shared = write_config(tmp_path, "postgresql")
    listed = run(shared, dsn, "failed")
    assert listed.returncode == 0, listed.stderr
    assert "meeting uid-refused" in listed.stdout and "1 failed message(s)" in listed.stdout

    again = run(files, dsn, "store", "migrate", "--to", "postgresql")
    assert again.returncode == 1 and "--replace" in again.stderr

    # and back, into a fresh data directory
    data.rename(tmp_path / "old-data")
    back = run(files, dsn, "store", "migrate", "--to", "file")
    assert back.returncode == 0, back.stderr
    assert f"-> arrived: {line}" in back.stdout
    seen, queued_back, failed_back = outqueue.read_state(DataLayout(data).queue("alpha"))
    assert set(seen) == {"sent", "waiting", "refused"}
    assert [q.message.id for q in queued_back] == ["waiting"]
    assert [f.message.id for f in failed_back] == ["refused"]
    assert [e["subject"] for e in decisions.read(DataLayout(data).decisions("alpha"))] == [
        "m5",
        "m4",
        "m3",
        "m2",
        "m1",
    ]
    sessions = FileSessions(data)
    assert sessions.key() == key
    kept = sessions.get("alpha", "digest-1")
    assert kept is not None
    assert Fernet(key.encode()).decrypt(kept["refresh"].encode()) == b"refresh-token-1"
    assert FileTokenCache(DataLayout(data).oauth("alpha")).load() == (
        '{"RefreshToken": {"x": {}}}',
        IDENTITY,
    )
    assert FileGraphState(DataLayout(data).graph("alpha")).load() == {
        "delta_link": "https://graph/delta?t=1"
    }


def test_sessions_moved_into_a_database_with_its_own_key_are_encrypted_again(
    tmp_path: Path, dsn: str, connect: Connect
) -> None:
    fill(tmp_path / "data")
    with connect() as conn:
        migrations.migrate(conn)
    theirs = Fernet.generate_key()
    with connect() as conn:
        conn.execute(
            "INSERT INTO vmrsched_secrets (name, value) VALUES (%s, %s)",
            (USER_KEY, raw_key(theirs.decode())),
        )
    done = run(write_config(tmp_path, "file"), dsn, "store", "migrate", "--to", "postgresql")
    assert done.returncode == 0, done.stderr
    stores = database_stores(connect, None)
    try:
        assert stores.user_sessions.key() == fernet_key(raw_key(theirs.decode()))
        entry = stores.user_sessions.get("alpha", "digest-1")
        assert entry is not None
        assert Fernet(theirs).decrypt(entry["refresh"].encode()) == b"refresh-token-1"
    finally:
        stores.close()


@pytest.mark.parametrize("backend", ["file", "postgresql"])
def test_failed_lists_nothing_when_nothing_failed(tmp_path: Path, dsn: str, backend: str) -> None:
    if backend == "postgresql":
        with psycopg.connect(dsn, autocommit=True) as conn:
            migrations.migrate(conn)
    done = run(write_config(tmp_path, backend), dsn, "failed")
    assert done.returncode == 0, done.stderr
    assert "0 failed message(s)" in done.stdout
