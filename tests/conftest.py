"""Fixtures shared by the tests: the service running one spool integration."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.configs import Running, spool_config
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
