"""`vmrsched serve` on a database it cannot use exits 1 with one line that says what is wrong
(docs/high-availability.md, "The schema" and "The connection string"), as a real process on a
real PostgreSQL: no traceback, no escapes in the line, never the password.

- a database a newer release migrated: the schema's version and this release's;
- a password the database refuses: "refused", with the server's reason;
- a connection string libpq cannot read: "malformed", with the key it names, and none of what
  it echoes of the string (a password with a space, a URL that holds one)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests import serving
from tests.pgcluster import Cluster
from tests.sharedkit import write_config
from vmrsched.postgres import migrations

pytestmark = pytest.mark.slow
Connect = Callable[[], psycopg.Connection[Any]]
ROLE = "vmrsched_start_test"
PASSWORD = "right-pass-7f3a"


def serve(tmp: Path, dsn: str) -> subprocess.CompletedProcess[str]:
    """`vmrsched serve` as an admin runs it, its log as text, the DSN in VMRSCHED_DSN."""
    config = write_config(tmp, "refused", serving.free_port(), 2.0, ["alpha"])
    config.write_text(config.read_text().replace('log_format = "json"', 'log_format = "text"'))
    return serving.command(config, "serve", env={"VMRSCHED_DSN": dsn}, timeout=60)


def refusal(done: subprocess.CompletedProcess[str]) -> str:
    """The one `cannot start:` line, checked for what every such line must be."""
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "Traceback" not in output
    [line] = [line for line in output.splitlines() if "cannot start:" in line]
    assert "\\n" not in line and "\\t" not in line and "  " not in line.split("cannot start:")[1]
    return line.split("cannot start: ", 1)[1]


def test_a_database_a_newer_release_migrated_is_refused_in_one_line(
    tmp_path: Path, dsn: str, connect: Connect
) -> None:
    newer = migrations.known_version() + 1
    with connect() as conn:
        migrations.migrate(conn)
        conn.execute(
            "INSERT INTO vmrsched_schema (version, title, checksum) VALUES (%s, 'later', '')",
            (newer,),
        )
    said = refusal(serve(tmp_path, dsn))
    assert said.startswith(
        f"the database schema is at version {newer}, newer than this release knows "
        f"({migrations.known_version()})"
    )


@pytest.fixture
def password_role(cluster: Cluster, connect: Connect) -> str:
    """A role that must give its password over TCP (the test cluster trusts everyone else)."""
    hba = cluster.data / "pg_hba.conf"
    rule = f"host all {ROLE} 127.0.0.1/32 scram-sha-256\n"
    if rule not in hba.read_text():
        hba.write_text(rule + hba.read_text())
    with connect() as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (ROLE,)).fetchone()
        if exists is None:
            conn.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'")
        conn.execute("SELECT pg_reload_conf()")
    return ROLE


def test_a_password_the_database_refuses_is_said_so_without_the_password(
    tmp_path: Path, dsn: str, password_role: str
) -> None:
    wrong = "wrong-pass-91c2"
    base = dsn.replace("user=postgres", f"user={password_role}")
    done = serve(tmp_path, f"{base} password={wrong}")
    said = refusal(done)
    assert said.startswith("the database refused this instance:"), said
    assert f'password authentication failed for user "{password_role}"' in said
    assert wrong not in done.stdout + done.stderr


@pytest.mark.parametrize(
    ("given", "named", "secret"),
    [
        ("hostx=127.0.0.1 dbname=vmrsched password=s3cret-0001", 'option "hostx"', "s3cret-0001"),
        ("host=127.0.0.1 password=half one-more", 'missing "=" after "…"', "one-more"),
        ("postgresql://vmrsched:two words@127.0.0.1/vmrsched", "spaces", "two words"),
        ("postgresql://vmrsched:pw-0003@[::1/vmrsched", "IPv6", "pw-0003"),
    ],
)
def test_a_connection_string_that_cannot_be_read_is_said_malformed_without_its_secrets(
    tmp_path: Path, given: str, named: str, secret: str
) -> None:
    done = serve(tmp_path, given)
    said = refusal(done)
    assert said.startswith("the database's connection string ([storage] dsn_env or dsn_file) is")
    assert named in said
    assert secret not in done.stdout + done.stderr
