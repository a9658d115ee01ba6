"""`vmrsched recover` when the records are in the shared database: it works on them there,
under the integration's lease (refused while an instance runs it, every commit fenced by it, the
lease given back at the end), as it works on a file store with the service stopped."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests import spoolkit
from tests.serving import command, free_port
from tests.sharedkit import write_config
from vmrsched import config, service

pytestmark = pytest.mark.slow


def recover(path: Path, dsn: str) -> subprocess.CompletedProcess[str]:
    return command(path, "recover", "alpha", env={"VMRSCHED_DSN": dsn}, timeout=120)


def live(connect: Callable[[], psycopg.Connection[Any]], uid: str) -> list[str]:
    with connect() as conn:
        rows = conn.execute(
            "SELECT alias_id FROM vmrsched_records WHERE integration = 'alpha'"
            " AND NOT archived AND record->>'meeting_uid' = %s",
            (uid,),
        ).fetchall()
    return [row[0] for row in rows]


def test_recover_on_the_shared_database(
    tmp_path: Path, dsn: str, connect: Callable[[], psycopg.Connection[Any]]
) -> None:
    path = write_config(tmp_path, "a", free_port(), 2.0, ["alpha"])
    cfg = config.load(path, environ={"VMRSCHED_DSN": dsn})
    spool = cfg.integrations[0].spool_dir(cfg.data_dir)
    svc = service.start(cfg)
    try:
        data, uid = spoolkit.request(body="<p>TOK:-00000000-0000-4000-8000-00000000beef#</p>")
        spoolkit.wait_handled(spool, spoolkit.drop(spool / "inbox", data))
        spoolkit.wait_for(lambda: len(spoolkit.answers_for(spool, uid)) == 2)
        busy = recover(path, dsn)  # the instance holds the integration's lease
        assert busy.returncode == 1, busy.stderr
        assert "an instance runs it" in busy.stderr and "stop the service first" in busy.stderr
    finally:
        svc.stop()
    [lost] = live(connect, uid)
    with connect() as conn:  # the records lost (an old backup restored, say)
        conn.execute("DELETE FROM vmrsched_records WHERE integration = 'alpha'")

    done = recover(path, dsn)
    assert done.returncode == 0, done.stderr
    assert f"bound         {uid}" in done.stdout and "alpha: 1 bound" in done.stdout
    [rebound] = live(connect, uid)
    assert rebound != lost
    assert not (cfg.data_dir / "store").exists()  # nothing went into files beside the database
    updates = [m for m in spoolkit.answers_for(spool, uid) if m.outcome == "updated"]
    assert len(updates) == 2 and any(rebound in m.html for m in updates)
    with connect() as conn:  # given back: an instance takes the integration at once
        row = conn.execute(
            "SELECT expires <= clock_timestamp(), owner FROM vmrsched_leases"
            " WHERE integration = 'alpha'"
        ).fetchone()
    assert row is not None and row[0] and row[1].startswith("recover@")

    again = recover(path, dsn)  # what it bound is found there the next time
    assert again.returncode == 0 and "alpha: 1 already_bound" in again.stdout, again.stdout
    assert live(connect, uid) == [rebound]
