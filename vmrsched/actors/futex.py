"""The kernel's futex hash, sized for the actor threads.

Since Linux 6.16 each process gets a private futex hash, sized by the machine's CPUs and never
by its threads: 16 slots on a 2-CPU machine. Every wake-up of a lock, a condition or the GIL
walks the waiters that share its slot; with 4,000 idle actor threads (1,000 integrations) that
is about 250 of them per wake-up. It was half of what 1,000 idle integrations cost and more
than a third of the system time of their start. The kernel's own rule is four slots per
thread, capped by the CPU count; asking for it without the cap puts a few waiters in a slot.
On older kernels (one global hash) and other systems nothing is done.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable

from vmrsched import libc

log = logging.getLogger("vmrsched.actors")

PR_FUTEX_HASH = 78  # <linux/prctl.h>
PR_FUTEX_HASH_SET_SLOTS = 1
PR_FUTEX_HASH_GET_SLOTS = 2
MIN_SLOTS = 16  # what the kernel gives a process anyway
MAX_SLOTS = 1 << 16  # enough for 16,384 threads


def slots_for(threads: int) -> int:
    """Four slots per thread, as a power of two (the kernel takes no other size)."""
    wanted = max(MIN_SLOTS, 4 * threads)
    return min(MAX_SLOTS, 1 << (wanted - 1).bit_length())


def _prctl() -> Callable[..., int] | None:
    function = libc.function("prctl")  # Linux only
    if function is None:
        return None
    function.argtypes = [ctypes.c_int, *[ctypes.c_ulong] * 4]
    function.restype = ctypes.c_int
    prctl: Callable[..., int] = function
    return prctl


_PRCTL = _prctl()


def current_slots() -> int | None:
    """The process's futex hash slots (0: the global hash), or None without private hashes."""
    if _PRCTL is None:
        return None
    slots = _PRCTL(PR_FUTEX_HASH, PR_FUTEX_HASH_GET_SLOTS, 0, 0, 0)
    return None if slots < 0 else slots


def size_futex_hash(threads: int) -> int | None:
    """Grow the process's futex hash for `threads` threads (never shrink it); the slots in
    use afterwards, or None where the kernel has no private futex hash."""
    current = current_slots()
    if current is None or _PRCTL is None:
        return None
    wanted = slots_for(threads)
    if current >= wanted:
        return current
    if _PRCTL(PR_FUTEX_HASH, PR_FUTEX_HASH_SET_SLOTS, wanted, 0, 0) != 0:
        log.debug("the kernel refused %d futex hash slots (errno %d)", wanted, ctypes.get_errno())
        return current
    return wanted
