"""The futex hash: four slots per actor thread, where the kernel (6.16 on) sizes each process's
hash by its CPUs and a lock's wake-up walks every waiter sharing its slot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vmrsched.actors import futex

ROOT = Path(__file__).resolve().parents[2]
needs_private_hash = pytest.mark.skipif(
    futex.current_slots() is None, reason="no private futex hash (not Linux 6.16 or later)"
)


def test_slots_are_a_power_of_two_near_four_per_thread() -> None:
    for threads in range(0, 20_000, 7):
        slots = futex.slots_for(threads)
        assert slots & (slots - 1) == 0, threads
        assert futex.MIN_SLOTS <= slots <= futex.MAX_SLOTS
        assert slots >= min(4 * threads, futex.MAX_SLOTS)
        assert slots < max(8 * threads, 2 * futex.MIN_SLOTS)  # at most twice what is asked


def run(script: str, *args: str) -> list[int]:
    done = subprocess.run(
        [sys.executable, "-c", script, *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return [int(word) for word in done.stdout.split()]


@needs_private_hash
def test_the_hash_grows_for_the_threads_and_never_shrinks() -> None:
    before, grown, kept, now = run(
        "import threading\n"
        "from vmrsched.actors import futex\n"
        "stop = threading.Event()\n"
        "for _ in range(50):\n"
        "    threading.Thread(target=stop.wait, daemon=True).start()\n"
        "print(futex.current_slots(), futex.size_futex_hash(1000), futex.size_futex_hash(10),"
        " futex.current_slots())\n"
    )
    assert before < 4096  # what the kernel gave the process by itself
    assert grown == kept == now == 4096


SERVICE = """
import sys
from pathlib import Path
from tests import spoolkit
from tests.configs import spool_config
from vmrsched import service
from vmrsched.actors import futex
from vmrsched.actors.bridge import ask
from vmrsched.actors.messages import Reload
from vmrsched.actors.service import threads_for

def integrations(count):
    return spool_config(Path(sys.argv[1]), names=tuple(f"i{n}" for n in range(count)))

first = integrations(int(sys.argv[2]))
svc = service.start(first)
spoolkit.wait_for(lambda: svc.ctx.status.state(first.integrations[-1].name) == "running")
print(futex.current_slots(), futex.slots_for(threads_for(first)))
if len(sys.argv) > 3:
    grown = integrations(int(sys.argv[3]))
    ask(svc.supervisor, Reload(grown), timeout=60)
    print(futex.current_slots(), futex.slots_for(threads_for(grown)))
svc.stop()
"""


@needs_private_hash
def test_the_service_sizes_the_hash_for_its_integrations(tmp_path: Path) -> None:
    (slots, wanted) = run(SERVICE, str(tmp_path), "40")
    assert wanted >= 1024  # 40 integrations of four threads, and the rest
    assert slots == wanted


@needs_private_hash
def test_a_reload_that_adds_integrations_grows_the_hash(tmp_path: Path) -> None:
    small, _, grown, wanted = run(SERVICE, str(tmp_path), "1", "100")
    assert small < wanted  # what one integration needed
    assert grown == wanted >= 1024  # 100 integrations of four threads, and the rest
