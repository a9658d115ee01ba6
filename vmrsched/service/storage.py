"""Where the service's state lives, as the admin moves it: `vmrsched store migrate --to
postgresql|file` copies each integration's records between its file store and the database the
config's `[storage]` names, and proves every record arrived (counts and checksums, both sides).
The service must be stopped; the database's schema is brought to this release's first."""

from __future__ import annotations

import os
import secrets
import socket

import psycopg

from vmrsched.actors.ownership import SharedStorage
from vmrsched.config import Config, store_dir
from vmrsched.errors import Unavailable
from vmrsched.postgres import migrations
from vmrsched.postgres.transfer import Moved, TransferError, to_files, to_postgresql
from vmrsched.service.runtime import database

__all__ = ["Moved", "TransferError", "database", "migrate_store", "open_shared"]


def migrate_store(cfg: Config, to: str, names: list[str], replace: bool = False) -> list[Moved]:
    """Move the named integrations' records `to` "postgresql" or "file"; TransferError on the
    first that cannot move or did not arrive whole (what moved before it stays moved)."""
    connect = database(cfg)
    moved: list[Moved] = []
    try:
        with connect() as conn:
            migrations.migrate(conn)
        for name in names:
            directory = store_dir(cfg.data_dir, name)
            if to == "postgresql":
                moved.append(to_postgresql(connect, name, directory, replace=replace))
            else:
                moved.append(to_files(connect, name, directory))
    except psycopg.Error as exc:
        raise Unavailable(f"the database did not answer: {exc}", "database_unavailable") from exc
    return moved


def open_shared(cfg: Config) -> SharedStorage:
    """The shared database for a starting instance: reachable, its schema at this release's
    version, and this instance's name (the config's, else host name, process id and a random
    part: unique per process run, so a restarted instance never passes for its old self).
    Unavailable when the database does not answer: the service does not start without it."""
    connect = database(cfg)
    try:
        with connect() as conn:
            migrations.migrate(conn)
    except psycopg.Error as exc:
        raise Unavailable(f"the database did not answer: {exc}", "database_unavailable") from exc
    instance = cfg.storage.instance or (
        f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"
    )
    return SharedStorage(connect, instance, cfg.storage.lease_seconds)
