"""`vmrsched store migrate --to postgresql|file`, as an admin runs it on a stopped service: every
record (live and archived) arrives, proved by counts and checksums on both sides; a database
that already holds the integration is not overwritten without --replace; a running service's
store is left alone; and the way back gives a file store the service opens with the same
records."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.configs import spool_toml
from vmrsched.postgres.transfer import read_files, tally
from vmrsched.rules.meetings import Action
from vmrsched.rules.recurrence import Schedule
from vmrsched.store import Store

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime.now(UTC)


def fill(directory: Path) -> None:
    """Reservations, a bound meeting, and a cancelled one moved to the archive."""
    store = Store(directory, clock=lambda: NOW, rng=random.Random(11))
    for _ in range(20):
        store.reserve("81", 6, "video.example.com", user="ann@example.com")
    for uid in ("kept", "gone"):
        record = store.reserve("81", 6, "video.example.com")
        start = NOW + timedelta(days=1)
        store.apply(
            Action(
                "bind",
                alias_id=record["alias_id"],
                meeting_uid=uid,
                schedule=Schedule(start, start + timedelta(hours=1)),
            ),
            {"name": f"Meeting {uid}", "organizer_email": "olga@example.com"},
        )
        if uid == "gone":
            store.apply(Action("cancel", alias_id=record["alias_id"], meeting_uid=uid, sequence=1))
    store.commit()
    assert store.sweep() == 1
    store.close()


def run(config: Path, dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmrsched", "store", "migrate", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "VMRSCHED_DSN": dsn},
        timeout=120,
    )


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "vmrsched.toml"
    path.write_text(
        spool_toml(tmp_path / "data", name="alpha") + '\n[storage]\ndsn_env = "VMRSCHED_DSN"\n'
    )
    return path


def test_there_and_back_every_record_arrives(tmp_path: Path, config: Path, dsn: str) -> None:
    directory = tmp_path / "data" / "store" / "alpha"
    fill(directory)
    before = tally(*read_files(directory))
    assert (before.live, before.archived) == (21, 1)

    done = run(config, dsn, "--to", "postgresql")
    assert done.returncode == 0, done.stderr
    assert f"alpha: {before} -> arrived: {before}" in done.stdout

    again = run(config, dsn, "--to", "postgresql")
    assert again.returncode == 1 and "--replace" in again.stderr
    assert run(config, dsn, "--to", "postgresql", "--replace").returncode == 0

    directory.rename(tmp_path / "old-store")
    back = run(config, dsn, "--to", "file")
    assert back.returncode == 0, back.stderr
    assert tally(*read_files(directory)) == before
    reopened = Store(directory)
    assert reopened.by_meeting_uid("kept") is not None and len(reopened) == 21
    reopened.close()


def test_a_running_services_store_is_left_alone(tmp_path: Path, config: Path, dsn: str) -> None:
    directory = tmp_path / "data" / "store" / "alpha"
    fill(directory)
    holder = Store(directory)  # as the running service holds it
    try:
        done = run(config, dsn, "--to", "postgresql")
    finally:
        holder.close()
    assert done.returncode == 1 and "stop the service first" in done.stderr


def test_without_a_database_in_the_config_it_says_so(tmp_path: Path) -> None:
    config = tmp_path / "vmrsched.toml"
    config.write_text(spool_toml(tmp_path / "data", name="alpha"))
    done = run(config, "", "--to", "postgresql")
    assert done.returncode == 1 and "dsn_env or dsn_file" in done.stderr
