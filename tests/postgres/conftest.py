"""A real PostgreSQL for the tests of the shared backend: one throwaway cluster per test session
(tests/pgcluster.py), a fresh database per test. Skipped, with the reason, only where Debian's
server binaries are absent; `.ci/run` installs them."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from tests import pgcluster

_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def cluster() -> Iterator[pgcluster.Cluster]:
    if pgcluster.binaries() is None:
        pytest.skip(pgcluster.missing_reason())
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
