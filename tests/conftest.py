"""Fixtures shared by the tests: the service running one spool integration."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pykka
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


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A test that leaves a service running would keep pytest from exiting (actor threads are
    not daemons, as a service's must not be): stop what is left, and say that it was left."""
    left = pykka.ActorRegistry.get_all()
    if left:
        names = sorted({ref.actor_class.__name__ for ref in left})
        print(f"\n{len(left)} actor(s) left running by a test, stopped now: {', '.join(names)}")
        pykka.ActorRegistry.stop_all(block=True, timeout=10)
