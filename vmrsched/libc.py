"""The C library the interpreter runs on, for the few Linux calls Python does not wrap
(syncfs(2), the futex hash of prctl(2)). Looked up in the running process: ctypes.util's
find_library would run ldconfig in a subprocess, from the first integration's start."""

from __future__ import annotations

import ctypes
from typing import Any


def function(name: str) -> Any | None:
    """The C function `name`, keeping errno for ctypes.get_errno; None where the C library
    has no such function (another system, an older C library)."""
    try:
        return getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
