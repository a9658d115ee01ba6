"""Where the service's state lives, as the admin moves it: `vmrsched store migrate --to
postgresql|file` copies each integration's records between its file store and the database the
config's `[storage]` names, then everything else the service keeps (each integration's
out-queue with its seen ids and failed messages, decisions log, delegated token cache and Graph
state; the user sign-in's sessions and key), and proves every part arrived (counts and
checksums, both sides). The service must be stopped (the data directory's lock says when it is
not); the database's schema is brought to this release's first.

Not moved: the admins' console sessions and the sign-ins in progress (in memory with the file
backend: they do not outlive a restart either), and the spool (the mail server's)."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from cryptography.fernet import Fernet, InvalidToken

from vmrsched.actors.ownership import SharedStorage
from vmrsched.config import Config, DataLayout, store_dir
from vmrsched.errors import Conflict, ServiceError, Unavailable
from vmrsched.mailbox.ews_auth import FileTokenCache
from vmrsched.mailbox.graph_notifications import FileGraphState
from vmrsched.postgres import migrations, transfer_state
from vmrsched.postgres.connection import Connect, why_not
from vmrsched.postgres.leases import Leases, NameInUse
from vmrsched.postgres.outqueue import failed_everywhere
from vmrsched.postgres.sessions import USER_KEY, fernet_key, raw_key
from vmrsched.postgres.transfer import Moved, TransferError, to_files, to_postgresql
from vmrsched.postgres.transfer_state import (
    IntegrationState,
    QueueState,
    SignInState,
    SignInTally,
    StateTally,
)
from vmrsched.service.runtime import database
from vmrsched.signin.users import KEY_ENV, FileSessions
from vmrsched.store import StorageUnavailableError, decisions, lock_directory, outqueue
from vmrsched.store.journal import atomic_write

log = logging.getLogger("vmrsched.service")

__all__ = ["Moved", "StateMoved", "TransferError", "database", "migrate_store", "open_shared"]


@dataclass(frozen=True)
class StateMoved:
    """What arrived of one integration's state, or of the sign-ins (`what`: "sign-ins")."""

    what: str
    source: StateTally | SignInTally
    arrived: StateTally | SignInTally


def migrate_store(
    cfg: Config,
    to: str,
    names: list[str],
    replace: bool = False,
    environ: dict[str, str] | None = None,
) -> list[Moved | StateMoved]:
    """Move the named integrations' records and state `to` "postgresql" or "file", then the
    sign-ins; TransferError when the destination already holds state of one of them (unless
    `replace`; nothing is moved then), or on the first part that did not arrive whole (what
    moved before it stays moved). StoreInUseError while a service runs on the data directory."""
    connect = database(cfg)
    env = dict(os.environ) if environ is None else environ
    moved: list[Moved | StateMoved] = []
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    lock = lock_directory(cfg.data_dir, f"the data directory {cfg.data_dir}")
    try:
        _migrated(cfg, connect)
        if not replace:
            _refuse_held(connect, cfg, to, names)
        for name in names:
            directory = store_dir(cfg.data_dir, name)
            if to == "postgresql":
                moved.append(to_postgresql(connect, name, directory, replace=replace))
                moved.append(_state_to_postgresql(connect, cfg, name))
            else:
                moved.append(to_files(connect, name, directory))
                moved.append(_state_to_files(connect, cfg, name))
        moved.append(_sign_ins(connect, cfg, to, names, env))
    except psycopg.Error as exc:
        raise unusable(cfg, exc) from exc
    finally:
        os.close(lock)
    return moved


def unusable(cfg: Config, exc: psycopg.Error) -> ServiceError:
    """The database cannot be used, as one line for the admin (connection.why_not): its
    connection string is malformed, it refused this instance, or it did not answer."""
    dsn = cfg.storage.dsn.reveal() if cfg.storage.dsn is not None else ""
    return Unavailable(why_not(exc, dsn), "database_unavailable")


def _migrated(cfg: Config, connect: Connect) -> None:
    """The database's schema brought to this release's version. Conflict (one line) when a
    newer release migrated it, or a migration was edited; `unusable` when it cannot be used."""
    try:
        with connect() as conn:
            migrations.migrate(conn)
    except migrations.SchemaError as exc:
        raise Conflict(str(exc), "database_schema") from exc
    except psycopg.Error as exc:
        raise unusable(cfg, exc) from exc


# --- each integration's state ------------------------------------------------------------------


def _held_in_files(layout: DataLayout, name: str) -> list[str]:
    held = []
    if outqueue.read_state(layout.queue(name))[0] or any(layout.queue(name).glob("*.log")):
        held.append("out-queue")
    if layout.decisions(name).exists():
        held.append("decisions")
    if layout.oauth(name).exists():
        held.append("token cache")
    if FileGraphState(layout.graph(name)).path.exists():
        held.append("Graph state")
    return held


def _refuse_held(connect: Connect, cfg: Config, to: str, names: list[str]) -> None:
    """TransferError, before anything moves, when the destination holds state of one of the
    integrations already."""
    layout = DataLayout(cfg.data_dir)
    for name in names:
        if to == "postgresql":
            with connect() as conn, conn.transaction():
                held = transfer_state.held_state(conn, name)
            where = "the database"
        else:
            held = _held_in_files(layout, name)
            where = str(cfg.data_dir)
        if held:
            raise TransferError(
                f"{name}: {where} already holds its {', '.join(held)}; --replace overwrites them"
            )


def read_file_state(layout: DataLayout, name: str) -> IntegrationState:
    seen, queued, failed = outqueue.read_state(layout.queue(name))
    state = IntegrationState(QueueState(seen, queued, failed))
    state.decisions = list(reversed(list(decisions.read(layout.decisions(name)))))
    cache, identity = FileTokenCache(layout.oauth(name)).load()
    if cache is not None:
        state.token_cache = (cache, identity)
    graph = FileGraphState(layout.graph(name))
    if graph.path.exists():
        state.graph_state = graph.load()
    return state


def write_file_state(layout: DataLayout, name: str, state: IntegrationState) -> None:
    """The integration's state as files under data_dir, replacing what was there."""
    queue_dir = layout.queue(name)
    for old in queue_dir.glob("outgoing.*.log"):
        old.unlink()
    queue = state.queue.completed()
    if queue.seen:
        outqueue.write_state(queue_dir, queue.seen, queue.queued, queue.failed)
    log = layout.decisions(name)
    if state.decisions:
        log.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(log, b"".join(map(decisions.line, state.decisions)))
    else:
        log.unlink(missing_ok=True)
    tokens = FileTokenCache(layout.oauth(name))
    if state.token_cache is not None:
        cache, identity = state.token_cache
        tokens.save(cache, identity or {})
        if identity is None:
            tokens.identity_path.unlink(missing_ok=True)
    else:
        tokens.drop()
    graph = FileGraphState(layout.graph(name))
    if state.graph_state is not None:
        graph.save(state.graph_state)
    else:
        graph.path.unlink(missing_ok=True)


def _state_to_postgresql(connect: Connect, cfg: Config, name: str) -> StateMoved:
    source_state = read_file_state(DataLayout(cfg.data_dir), name)
    source = transfer_state.tally_state(source_state)
    with connect() as conn, conn.transaction():
        transfer_state.write_state(conn, name, source_state)
        arrived = transfer_state.tally_state(transfer_state.read_state(conn, name))
        if arrived != source:
            raise TransferError(f"{name}: files hold {source}, the database {arrived}")
    return StateMoved(name, source, arrived)


def _state_to_files(connect: Connect, cfg: Config, name: str) -> StateMoved:
    with connect() as conn, conn.transaction():
        source_state = transfer_state.read_state(conn, name)
    source = transfer_state.tally_state(source_state)
    layout = DataLayout(cfg.data_dir)
    write_file_state(layout, name, source_state)
    arrived = transfer_state.tally_state(read_file_state(layout, name))
    if arrived != source:
        raise TransferError(f"{name}: the database holds {source}, the files {arrived}")
    return StateMoved(name, source, arrived)


# --- the user sign-in's sessions and key ------------------------------------------------------


def _plain(key: str | None) -> Callable[[str], str]:
    """What a refresh token encrypted with `key` says ("" when it does not decrypt)."""
    cipher = Fernet(key.encode()) if key else None

    def plain(token: str) -> str:
        if not token or cipher is None:
            return ""
        try:
            return cipher.decrypt(token.encode()).decode()
        except InvalidToken:
            return ""

    return plain


def _reencrypted(
    sessions: dict[str, dict[str, dict[str, Any]]], source: str | None, target: str | None
) -> dict[str, dict[str, dict[str, Any]]]:
    """The sessions with their refresh tokens encrypted with `target` instead of `source`."""
    if source == target or target is None:
        return sessions
    plain, cipher = _plain(source), Fernet(target.encode())
    moved: dict[str, dict[str, dict[str, Any]]] = {}
    for integration, kept in sessions.items():
        for token_digest, entry in kept.items():
            text = plain(str(entry.get("refresh", "")))
            again = dict(entry, refresh=cipher.encrypt(text.encode()).decode() if text else "")
            moved.setdefault(integration, {})[token_digest] = again
    return moved


def _database_key(conn: psycopg.Connection[Any]) -> str | None:
    row = conn.execute("SELECT value FROM vmrsched_secrets WHERE name = %s", (USER_KEY,)).fetchone()
    return fernet_key(bytes(row[0])) if row is not None else None


def _sign_ins(
    connect: Connect, cfg: Config, to: str, names: list[str], env: dict[str, str]
) -> StateMoved:
    """The named integrations' user sessions, and the key their refresh tokens need: the key
    goes along when the destination has none; otherwise the tokens are encrypted again with the
    destination's (VMRSCHED_SESSION_KEY, when set, is both sides' key and stays where it is)."""
    files = FileSessions(cfg.data_dir)
    key_file = files.directory / "key"
    wanted = set(names)
    from_env = env.get(KEY_ENV, "").strip() or None
    with connect() as conn, conn.transaction():
        in_database = SignInState(from_env or _database_key(conn), read_sessions_of(conn, wanted))
        in_files = SignInState(
            from_env or (files.key() if key_file.exists() else None),
            {n: files.sessions(n) for n in files.integrations() if n in wanted},
        )
        source, target = (in_files, in_database) if to == "postgresql" else (in_database, in_files)
        key = target.key or source.key
        sessions = _reencrypted(source.sessions, source.key, key)
        before = transfer_state.tally_sign_ins(source, _plain(source.key))
        if to == "postgresql":
            if target.key is None and source.key is not None and from_env is None:
                conn.execute(
                    "INSERT INTO vmrsched_secrets (name, value) VALUES (%s, %s)",
                    (USER_KEY, raw_key(source.key)),
                )
            transfer_state.write_sessions(conn, sessions)
            arrived_sessions = read_sessions_of(conn, wanted)
            arrived_key = from_env or _database_key(conn)
        else:
            if target.key is None and source.key is not None and from_env is None:
                files.set_key(source.key)
            for integration, kept in sessions.items():
                files.replace(integration, {**files.sessions(integration), **kept})
            again = FileSessions(cfg.data_dir)
            arrived_sessions = {n: again.sessions(n) for n in again.integrations() if n in wanted}
            arrived_key = from_env or (again.key() if key_file.exists() else None)
        moved_keys = {(i, d) for i, kept in source.sessions.items() for d in kept}
        arrived = transfer_state.tally_sign_ins(
            SignInState(
                arrived_key,
                {
                    i: {d: e for d, e in kept.items() if (i, d) in moved_keys}
                    for i, kept in arrived_sessions.items()
                    if any((i, d) in moved_keys for d in kept)
                },
            ),
            _plain(arrived_key),
        )
        if (arrived.sessions, arrived.checksum) != (before.sessions, before.checksum) or (
            source.key is not None and arrived_key is None
        ):
            raise TransferError(f"sign-ins: the source holds {before}, the destination {arrived}")
    return StateMoved("sign-ins", before, arrived)


def read_sessions_of(
    conn: psycopg.Connection[Any], wanted: set[str]
) -> dict[str, dict[str, dict[str, Any]]]:
    return {n: s for n, s in transfer_state.read_sessions(conn).items() if n in wanted}


def failed_messages(cfg: Config) -> dict[str, list[outqueue.Failed]]:
    """Every integration's failed outgoing messages kept in the config's database (the
    backend is postgresql): read beside running instances, whichever runs each integration.
    Unavailable when the database does not answer."""
    try:
        return failed_everywhere(database(cfg))
    except StorageUnavailableError as exc:
        raise Unavailable(str(exc), "database_unavailable") from exc


def open_shared(cfg: Config, sleep: Callable[[float], None] = time.sleep) -> SharedStorage:
    """The shared database for a starting instance: reachable, its schema at this release's
    version, and this instance's name (the config's, else host name, process id and a random
    part: unique per process run, so a restarted instance never passes for its old self),
    taken for this process run (`take_name`). A ServiceError, said in one line, when the
    database cannot be used (it does not answer, refuses this instance, is named by a malformed
    string, or holds a schema this release does not know), or when another instance that is
    alive holds the name: the service does not start without it."""
    connect = database(cfg, service=True)
    _migrated(cfg, connect)
    host = socket.gethostname()
    instance = cfg.storage.instance or f"{host}-{os.getpid()}-{secrets.token_hex(2)}"
    url = cfg.storage.advertised(cfg.server, host)
    leases = Leases(connect, instance, cfg.storage.lease_seconds, url)
    try:
        take_name(leases, sleep)
    except psycopg.Error as exc:
        raise unusable(cfg, exc) from exc
    return SharedStorage(connect, instance, cfg.storage.lease_seconds, url=url, run=leases.run)


def take_name(leases: Leases, sleep: Callable[[float], None] = time.sleep) -> None:
    """Take the instance's name for this process run (its first heartbeat). While the name's
    last holder was heard from within a lease, watch it: a holder that heartbeats again (every
    third of a lease) is another instance running under the same name, and the start is
    refused (Conflict, naming where it serves and when it was last heard from); one that stays
    silent is a run that died (a crash and a restart within the lease, on this machine or
    another), and the name is taken once it has been silent for a lease."""
    first: NameInUse | None = None
    while True:
        try:
            leases.heartbeat()
            return
        except NameInUse as held:
            if first is None:
                first = held
                log.warning(
                    "the instance name %r was last heard from %.1f s ago, at %s: waiting up "
                    "to %.1f s to see whether that instance still runs (after a crash, it "
                    "does not)",
                    held.instance,
                    held.age,
                    held.url or "no advertised URL",
                    max(0.0, leases.lease_seconds - held.age),
                )
            elif (held.seen, held.started) != (first.seen, first.started):
                raise Conflict(
                    f"{held}: give every instance a name of its own ([storage] instance), or "
                    "leave it empty",
                    "instance_name_in_use",
                ) from held
        sleep(min(1.0, leases.lease_seconds / 6))
