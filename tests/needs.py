"""What a test does when this machine lacks something it needs (PostgreSQL's server, nginx,
promtool, root for a tmpfs): skip with the reason on a developer's machine, fail in CI.

`.ci/run` sets VMRSCHED_TESTS_NEED_EVERYTHING after scripts/test installed all of it, so a test
that would quietly skip there (an install step lost, a package renamed) fails instead."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

REQUIRED = "VMRSCHED_TESTS_NEED_EVERYTHING"


def unavailable(reason: str) -> NoReturn:
    if os.environ.get(REQUIRED):
        pytest.fail(f"{reason} ({REQUIRED} is set: CI must run this test)", pytrace=False)
    pytest.skip(reason)
