"""Fixtures shared by the tests: the service running one spool integration."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pykka
import pytest

from tests import pgcluster
from tests.configs import Running, spool_config
from tests.needs import unavailable
from vmrsched import service


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    """The service running one spool integration ("alpha")."""
    cfg = spool_config(tmp_path)
    svc = service.start(cfg)
    try:
        yield Running(svc, cfg)
    finally:
        svc.stop()


# --- a real PostgreSQL: one throwaway cluster per session (tests/pgcluster.py), a fresh
# database per test; skipped, with the reason, only where Debian's server binaries are absent
# (`.ci/run` installs them)

_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def cluster() -> Iterator[pgcluster.Cluster]:
    if pgcluster.binaries() is None:
        unavailable(pgcluster.missing_reason())
    with pgcluster.running() as running:
        yield running


@pytest.fixture
def dsn(cluster: pgcluster.Cluster) -> str:
    """A new empty database's connection string."""
    return cluster.create_database(f"test_{next(_numbers)}")


@pytest.fixture
def connect(dsn: str) -> Callable[[], psycopg.Connection[Any]]:
    def connect() -> psycopg.Connection[Any]:
        return psycopg.connect(dsn, autocommit=True)

    return connect


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A test that leaves a service running would keep pytest from exiting (actor threads are
    not daemons, as a service's must not be): stop what is left, and say that it was left."""
    left = pykka.ActorRegistry.get_all()
    if left:
        names = sorted({ref.actor_class.__name__ for ref in left})
        print(f"\n{len(left)} actor(s) left running by a test, stopped now: {', '.join(names)}")
        pykka.ActorRegistry.stop_all(block=True, timeout=10)
