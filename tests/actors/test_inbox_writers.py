"""Writers that make their file in inbox/ under a temp name and rename it when it is whole, as
common tools do (`<name>.tmp`, `<name>.part`, an editor's `<name>~`, Emacs's `.#<name>` and
`#<name>#`, a dot name), are left alone while they write: the running service, polling every
50 ms, never reads, moves or answers the half-written file, so each rename works and each
request is answered once, from its whole file."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import spoolkit
from tests.configs import spool_config
from vmrsched import service

TEMP_NAMES = ["{}.tmp", "{}.part", "{}.PART", "{}~", ".#{}", "#{}#", ".{}.XyZ123"]

# a writer in a process of its own: the file in three pieces over 1.5 s, then renamed in;
# exit 3 when the rename finds its file gone (the service took it half-written)
WRITER = """
import os, sys, time
temp, final, source = sys.argv[1:]
data = open(source, "rb").read()
third = len(data) // 3 + 1
with open(temp, "wb") as out:
    for start in range(0, len(data), third):
        out.write(data[start : start + third])
        out.flush()
        time.sleep(0.5)
try:
    os.rename(temp, final)
except FileNotFoundError:
    sys.exit(3)
"""


@pytest.fixture
def svc(tmp_path: Path) -> Iterator[service.Service]:
    running = service.start(spool_config(tmp_path))
    try:
        spoolkit.wait_for(lambda: running.ctx.status.state("alpha") == "running")
        yield running
    finally:
        running.stop()


@pytest.mark.slow
def test_files_written_in_the_inbox_under_temp_names_are_read_only_once_renamed(
    svc: service.Service, tmp_path: Path
) -> None:
    spool = svc.config.integrations[0].spool_dir(svc.config.data_dir)
    inbox = spool / "inbox"
    writers = []
    for number, pattern in enumerate(TEMP_NAMES):
        data, uid = spoolkit.request(subject=f"Written slowly {number}")
        source = tmp_path / f"source-{number}.ics"
        source.write_bytes(data)
        final = f"invite-{number}.ics"
        temp = pattern.format(final)
        process = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(inbox / temp), str(inbox / final), str(source)]
        )
        writers.append((process, temp, final, uid))
    for process, temp, _, _ in writers:
        assert process.wait(timeout=30) == 0, f"the service took {temp} while it was written"
    for _, _, final, uid in writers:
        spoolkit.wait_handled(spool, final)
        [answer] = spoolkit.answers_for(spool, uid)
        # read whole: decided on what it asks (no alias reserved: declined), not unreadable
        assert answer.reason == "invalid_alias_id"
        assert (spool / "processed" / final).exists()
    assert list((spool / "failed").iterdir()) == []
