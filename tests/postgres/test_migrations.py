"""Schema migrations on a real PostgreSQL: applied once, in order, by whichever instance comes
first (the others wait and find nothing to do); a newer or edited schema is refused."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import psycopg
import pytest

from vmrsched.postgres import migrations
from vmrsched.postgres.migrations import SchemaError

Connect = Callable[[], psycopg.Connection[Any]]


def test_a_new_database_gets_every_migration_and_a_second_start_none(connect: Connect) -> None:
    with connect() as conn:
        assert migrations.version(conn) == 0
        assert migrations.migrate(conn) == [m.version for m in migrations.MIGRATIONS]
        assert migrations.migrate(conn) == []
        assert migrations.version(conn) == migrations.known_version()


def test_instances_starting_together_migrate_once(connect: Connect) -> None:
    results: list[list[int]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def one() -> None:
        try:
            with connect() as conn:
                start.wait()
                results.append(migrations.migrate(conn))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    assert sorted(map(len, results)) == [0, 0, 0, len(migrations.MIGRATIONS)]


def test_the_service_wide_alias_constraints_hold_across_integrations(connect: Connect) -> None:
    with connect() as conn:
        migrations.migrate(conn)
        insert = (
            "INSERT INTO vmrsched_records (integration, alias_id, alias, numeric_alias, record,"
            " written) VALUES (%s, %s, %s, %s, '{}', 1)"
        )
        conn.execute(insert, ("alpha", "a1", "81000001@video.example.com", "81000001"))
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(insert, ("beta", "b1", "81000002@video.example.com", "81000001"))
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(insert, ("beta", "b2", "81000001@VIDEO.example.com", "81000003"))


def test_a_database_a_newer_release_migrated_is_refused(connect: Connect) -> None:
    with connect() as conn:
        migrations.migrate(conn)
        conn.execute(
            "INSERT INTO vmrsched_schema (version, title, checksum) VALUES (%s, 'later', 'x')",
            (migrations.known_version() + 1,),
        )
        with pytest.raises(SchemaError, match="newer than this release"):
            migrations.migrate(conn)


def test_an_edited_migration_is_refused(connect: Connect, monkeypatch: pytest.MonkeyPatch) -> None:
    with connect() as conn:
        migrations.migrate(conn)
        first = migrations.MIGRATIONS[0]
        edited = (replace(first, sql=first.sql + "\n-- edited"), *migrations.MIGRATIONS[1:])
        monkeypatch.setattr(migrations, "MIGRATIONS", edited)
        with pytest.raises(SchemaError, match="never edited"):
            migrations.migrate(conn)
