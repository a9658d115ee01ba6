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


@needs_private_hash
def test_the_service_sizes_the_hash_for_its_integrations(tmp_path: Path) -> None:
    (slots, wanted) = run(
        "from pathlib import Path\n"
        "from tests import spoolkit\n"
        "from tests.configs import spool_config\n"
        "from vmrsched import service\n"
        "from vmrsched.actors import futex\n"
        "from vmrsched.actors.service import threads_for\n"
        f"cfg = spool_config(Path({str(tmp_path)!r}), names=[f'i{{n}}' for n in range(40)])\n"
        "svc = service.start(cfg)\n"
        "spoolkit.wait_for(lambda: svc.ctx.status.state('i39') == 'running')\n"
        "print(futex.current_slots(), futex.slots_for(threads_for(cfg)))\n"
        "svc.stop()\n"
    )
    assert wanted >= 1024  # 40 integrations of four threads, and the rest
    assert slots == wanted


RELOAD = """
import sys
from pathlib import Path
from tests import spoolkit
from vmrsched import config, service
from vmrsched.actors import futex
from vmrsched.actors.service import threads_for

path = Path(sys.argv[1])
data = path.parent / "data"

def write(count):
    text = f'[server]\\nlisten = "127.0.0.1:0"\\ndata_dir = "{data}"\\n'
    for n in range(count):
        text += (
            f'[[integrations]]\\nname = "i{n}"\\n[integrations.exchange]\\n'
            f'mailbox_name = "Room {n}"\\nmailbox_email = "vmr{n}@example.com"\\n'
            '[integrations.addin]\\ntoken_validation = "none"\\n'
        )
    path.write_text(text)

write(1)
svc = service.start(config.load(path))
spoolkit.wait_for(lambda: svc.ctx.status.state("i0") == "running")
small = futex.current_slots()
write(100)
svc.reload()
print(small, futex.current_slots(), futex.slots_for(threads_for(config.load(path))))
svc.stop()
"""


@needs_private_hash
def test_a_reload_that_adds_integrations_grows_the_hash(tmp_path: Path) -> None:
    small, grown, wanted = run(RELOAD, str(tmp_path / "vmrsched.toml"))
    assert small < wanted  # what one integration needed
    assert grown == wanted >= 1024  # 100 integrations of four threads, and the rest
