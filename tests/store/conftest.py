"""What the store's test modules share: `make`, a store opener for each backend."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.store.test_store import DatabaseOpener, FileOpener, Opener
from vmrsched.postgres import migrations


@pytest.fixture(params=["file", "postgresql"])
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    """The store's behaviour is the same on both backends: these tests run on each."""
    if request.param == "file":
        return FileOpener(tmp_path)
    connect = request.getfixturevalue("connect")
    with connect() as conn:
        migrations.migrate(conn)
    return DatabaseOpener(connect)
