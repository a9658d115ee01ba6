"""A reservation asked of the allocator on the shared database, whose alias another instance's
integration drew and committed first (neither instance knows the other's aliases): the add-in
is answered with another alias, the one the database holds, with no 503 and no alarm."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from tests.configs import Running, stored_record
from tests.sharedkit import one_integration
from vmrsched import service
from vmrsched.postgres import migrations
from vmrsched.postgres.records import Records
from vmrsched.rules import aliases
from vmrsched.store import DatabaseStore

Connect = Callable[[], psycopg.Connection[Any]]
SEED = 5  # the random source of the allocator and of the other integration's store alike
PREFIX, DIGITS, DOMAIN = "vmr", 6, "video.example.com"  # the config's defaults


def test_the_add_in_gets_the_alias_the_database_holds(
    tmp_path: Path, dsn: str, connect: Connect
) -> None:
    first = aliases.generate_alias(PREFIX, DIGITS, DOMAIN, lambda _: False, random.Random(SEED))
    with connect() as conn:
        migrations.migrate(conn)
    beta = DatabaseStore(Records(connect, "beta"), rng=random.Random(SEED))
    theirs = beta.reserve(PREFIX, DIGITS, DOMAIN)  # another instance's integration
    beta.commit()
    beta.close()
    assert theirs["numeric_alias"] == first.numeric_alias

    cfg = one_integration(tmp_path, dsn)
    svc = service.start(cfg, rng=random.Random(SEED))
    try:
        running = Running(svc, cfg)
        record = running.reserve()  # drew `first` too; the database refused it
        assert record["numeric_alias"] != first.numeric_alias
        assert record["alias"] == f"{record['numeric_alias']}@{DOMAIN}"
        assert not svc.ctx.alarms.active("alpha")
        allocator = svc.ctx.registry.get("alpha", "allocator")
        assert stored_record(allocator, record["alias_id"]) == record
        with connect() as conn:
            row = conn.execute(
                "SELECT alias, numeric_alias, record FROM vmrsched_records"
                " WHERE integration = 'alpha' AND alias_id = %s",
                (record["alias_id"],),
            ).fetchone()
        assert row == (record["alias"], record["numeric_alias"], record)
        # the policy index was given the alias the add-in got, not the refused one
        room = svc.ctx.alias_index.lookup(record["numeric_alias"])
        assert room is not None and room.alias_id == record["alias_id"]
        assert svc.ctx.alias_index.lookup(first.numeric_alias) is None
    finally:
        svc.stop()
