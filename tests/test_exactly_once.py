"""Exactly once across SIGKILL, with the service as a real process: nothing that was answered is
answered again after a restart, and a kill in the middle of a burst leaves every meeting with one
answer and one organizer update, on the spool and against the fake Exchange over HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests import spoolkit
from tests.configs import write_toml
from tests.fakes.ews_server import FakeExchange
from tests.fakes.threaded import ThreadedServer
from tests.graphkit import ROOM as GRAPH_ROOM
from tests.graphkit import SECRET, graph_world
from tests.serving import free_port, sends, start, wait_ready, write_config
from vmrsched.rules.meetings import Meeting

ROOT = Path(__file__).resolve().parent.parent
ROOM = "room@example.com"
pytestmark = pytest.mark.slow


def kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def tok(i: int) -> str:
    return f"TOK:-00000000-0000-4000-8000-{i:012d}#"


# --- spool -------------------------------------------------------------------------------------


def test_spool_sigkill_when_idle_resends_nothing(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "vmrsched.toml"
    write_config(config, port)
    spool = tmp_path / "data" / "spool" / "default"
    proc = start(config)
    uids = []
    try:
        wait_ready(port)
        for i in range(3):
            data, uid = spoolkit.request(body=f"<p>{tok(i)}</p>")
            spoolkit.drop(spool / "inbox", data)
            uids.append(uid)
        spoolkit.wait_for(lambda: len(spoolkit.outbox(spool)) == 6, timeout=30)
        time.sleep(0.5)  # idle
        kill(proc)
        proc = start(config)
        wait_ready(port)
        time.sleep(1.5)
        stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    counts = sends(config)
    for uid in uids:
        assert counts[(uid, "reply")] == 1 and counts[(uid, "update")] == 1, counts
    assert sum(counts.values()) == 6


def placeholder_then_cancel(inbox: Path, pairs: int) -> list[str]:
    """`pairs` meetings booked offline (a placeholder request), each cancelled right after
    (SEQUENCE 1), all in the inbox before the service reads it, each request older than its
    cancellation (the spool takes the oldest first)."""
    oldest = time.time() - 600
    uids = []
    for i in range(pairs):
        request, uid = spoolkit.request(body=f"<p>{tok(100 + i)}</p>")
        cancel, _ = spoolkit.request(uid, method="CANCEL", sequence=1)
        for j, data in enumerate((request, cancel)):
            name = spoolkit.drop(inbox, data, f"{i:03d}-{j}.ics")
            stamp = oldest + 2 * i + j
            os.utime(inbox / name, (stamp, stamp))
        uids.append(uid)
    return uids


def answers_by_meeting(spool: Path) -> Counter[tuple[str, str, str]]:
    return Counter(
        (m.headers["X-Vmrsched-Meeting-Uid"], m.outcome, m.reason) for m in spoolkit.outbox(spool)
    )


def test_spool_sigkill_before_a_request_and_its_cancellation_were_moved_sends_nothing_new(
    tmp_path: Path,
) -> None:
    """The audit's crash3.py, made exact: a request and its CANCEL decided in one batch
    (accepted, then cancelled), and SIGKILL before the two inbox files were moved, which leaves
    both in the inbox (put back here after the kill). After the restart they are read and
    decided again: the organizer has the one "Accepted" for SEQUENCE 0 and nothing else (no
    "Declined: alias_deleted" contradicting it, no update restoring the cancelled meeting)."""
    port = free_port()
    config = tmp_path / "vmrsched.toml"
    write_config(config, port)
    spool = tmp_path / "data" / "spool" / "default"
    uids = placeholder_then_cancel(spool / "inbox", 3)
    names = sorted(p.name for p in (spool / "inbox").iterdir())
    proc = start(config)
    try:
        wait_ready(port)
        spoolkit.wait_for(lambda: not any((spool / "inbox").iterdir()), timeout=30)
        spoolkit.wait_for(lambda: sum(sends(config).values()) >= 3, timeout=30)
        time.sleep(0.5)
        kill(proc)
        for name in names:  # as a kill between queueing the answers and the moves leaves them
            os.replace(spool / "processed" / name, spool / "inbox" / name)
        proc = start(config)
        wait_ready(port)
        spoolkit.wait_for(lambda: not any((spool / "inbox").iterdir()), timeout=30)
        time.sleep(1.5)
        stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert answers_by_meeting(spool) == Counter(
        {(uid, "accepted", "new_single"): 1 for uid in uids}
    )
    assert sends(config) == Counter({(uid, "reply"): 1 for uid in uids})


def test_spool_sigkill_mid_burst_of_cancelled_bookings_answers_each_request_once(
    tmp_path: Path,
) -> None:
    """The same with a real kill's timing: 40 requests each followed by their CANCEL, SIGKILL
    as the first file reaches processed/ (the audit found 27 of 150 meetings answered twice so),
    then a restart that reads the rest and whatever the kill left. Each request is answered
    once, accepted (it was decided before its cancellation) or, if the kill came before its
    answer was queued, not at all; none is declined and no organizer update goes out."""
    port = free_port()
    config = tmp_path / "vmrsched.toml"
    write_config(config, port)
    spool = tmp_path / "data" / "spool" / "default"
    uids = placeholder_then_cancel(spool / "inbox", 40)
    proc = start(config)
    try:
        spoolkit.wait_for(
            lambda: any((spool / "processed").glob("*.ics")), timeout=30, interval=0.002
        )
        kill(proc)
        proc = start(config)
        wait_ready(port)
        spoolkit.wait_for(lambda: not any((spool / "inbox").iterdir()), timeout=60)
        time.sleep(1.5)
        stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    got = answers_by_meeting(spool)
    assert all(n == 1 for n in got.values()), got
    assert {(outcome, reason) for _, outcome, reason in got} <= {("accepted", "new_single")}, got
    assert {uid for uid, _, _ in got} <= set(uids)
    assert all(kind == "reply" and n == 1 for (_, kind), n in sends(config).items())


# The service, dying (SIGKILL, by its own hand) the instant a withdrawal's mark is durable: the
# queue's `done` for an organizer update, which only a withdrawal marks when no update is sent.
DIES_AFTER_A_WITHDRAWAL = """
import os, signal, sys
from vmrsched.cli.main import main
from vmrsched.store.outqueue import OutQueue
done = OutQueue.done
def done_then_die(self, ids):
    ids = list(ids)
    updates = [i for i in ids if i in self._pending and self._pending[i].kind == "update"]
    done(self, ids)
    if updates:
        os.kill(os.getpid(), signal.SIGKILL)
OutQueue.done = done_then_die
sys.exit(main(sys.argv[1:]))
"""


def withdrawals(config: Path) -> Counter[str]:
    """meeting uid -> how many times the log says its update was withdrawn, over every run."""
    counts: Counter[str] = Counter()
    for line in (config.parent / "server.log").read_text().splitlines():
        if line.startswith("{") and " withdrawn: " in (entry := json.loads(line))["message"]:
            counts[entry["meeting_uid"]] += 1
    return counts


def test_spool_a_withdrawal_is_logged_though_the_process_dies_right_after_marking_it(
    tmp_path: Path,
) -> None:
    """The audit's crash3_snap.py, made exact: a request booked offline and its CANCEL in one
    batch, so the organizer update is withdrawn; the process dies by SIGKILL the instant the
    withdrawal is durable in the queue. The log still says it was withdrawn (the line is
    written before the mark; docs/guarantees.md), and after the restart the update is never
    sent."""
    port = free_port()
    config = tmp_path / "vmrsched.toml"
    write_config(config, port)
    spool = tmp_path / "data" / "spool" / "default"
    [uid] = placeholder_then_cancel(spool / "inbox", 1)
    with open(config.parent / "server.log", "ab") as log:
        dying = subprocess.run(
            [sys.executable, "-c", DIES_AFTER_A_WITHDRAWAL, "serve", "--config", str(config)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=60,
        )
    assert dying.returncode == -signal.SIGKILL
    proc = start(config)
    try:
        wait_ready(port)
        spoolkit.wait_for(lambda: not any((spool / "inbox").iterdir()), timeout=30)
        time.sleep(1)
        stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert withdrawals(config)[uid] >= 1
    assert answers_by_meeting(spool) == Counter({(uid, "accepted", "new_single"): 1})


# --- Exchange (the fake, over HTTP) -----------------------------------------------------------


def ews_config(tmp_path: Path, url: str, port: int) -> Path:
    return write_toml(
        tmp_path / "data",
        url,
        server=f'listen = "127.0.0.1:{port}"\nlog_format = "json"',
        exchange="poll_interval_seconds = 0.05",
    )


def meeting(i: int) -> Meeting:
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1, minutes=i)
    return Meeting(
        uid=f"burst-{i}",
        method="REQUEST",
        start=start,
        end=start + timedelta(minutes=30),
        organizer_name="Olga Organizer",
        organizer_email=f"olga{i % 5}@example.com",
        subject=f"Meeting {i}",
        html_body=f"<p>Agenda {i}</p><p>{tok(i)}</p>",
        attendees=("bob@example.com",),
    )


def answered(fake: FakeExchange, uid: str) -> int:
    return sum(1 for r in fake.replies(ROOM) if r.meeting is not None and r.meeting.uid == uid)


def updates(fake: FakeExchange, uid: str) -> int:
    return sum(
        item.updates_sent
        for box in list(fake.mailboxes.values())
        for item in list(box.calendar.values())
        if item.meeting is not None and item.meeting.uid == uid and box.address != ROOM
    )


@pytest.mark.parametrize("kill_after", [0, 15])
def test_ews_sigkill_idle_or_mid_burst_answers_each_meeting_once(
    tmp_path: Path, kill_after: int
) -> None:
    """kill_after 0: all 50 answered, then SIGKILL while idle; 15: SIGKILL once 15 of the 50
    have been answered, while the rest are being worked on."""
    fake = FakeExchange()
    server = ThreadedServer(fake.app()).start()
    port = free_port()
    config = ews_config(tmp_path, server.url, port)
    env = {"VMRSCHED_EWS_PASSWORD": "s3cret"}
    proc = start(config, env)
    items = []
    try:
        wait_ready(port)
        items = [fake.deliver(ROOM, meeting(i)) for i in range(50)]
        count = kill_after or 50
        spoolkit.wait_for(
            lambda: sum(1 for i in range(50) if answered(fake, f"burst-{i}")) >= count, timeout=60
        )
        if not kill_after:
            spoolkit.wait_for(lambda: not fake.mailbox(ROOM).inbox, timeout=60)
            time.sleep(0.5)
        kill(proc)
        proc = start(config, env)
        wait_ready(port)
        spoolkit.wait_for(
            lambda: (
                all(updates(fake, f"burst-{i}") for i in range(50)) and not fake.mailbox(ROOM).inbox
            ),
            timeout=120,
        )
        time.sleep(1.5)  # the echoes of the organizer updates have come and gone
        stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
        server.stop()
    assert len(items) == 50
    for i in range(50):
        uid = f"burst-{i}"
        assert answered(fake, uid) == 1, (uid, answered(fake, uid))
        assert updates(fake, uid) == 1, (uid, updates(fake, uid))
    # no plain-mail fallbacks: every answer went out as the response to its request
    assert not [r for r in fake.replies(ROOM) if r.meeting is None]


# --- Exchange Online (the fake Graph, over HTTP) ----------------------------------------------


@pytest.mark.parametrize("kill_after", [0, 15])
def test_graph_sigkill_idle_or_mid_burst_answers_each_meeting_once(
    tmp_path: Path, kill_after: int
) -> None:
    stack = ExitStack()
    world = stack.enter_context(graph_world(tmp_path))
    fake = world.fake
    port = free_port()
    config = tmp_path / "vmrsched.toml"
    config.write_text(world.toml(tmp_path / "data", port, poll_interval_seconds=0.05))
    env = {"GRAPH_SECRET": SECRET}

    def answered(uid: str) -> int:
        return len(fake.responses_for(uid))

    def updates(uid: str) -> int:
        with fake.lock:
            return sum(1 for _, patched in fake.patches if patched == uid)

    proc = start(config, env)
    try:
        wait_ready(port)
        for i in range(50):
            fake.deliver(GRAPH_ROOM, meeting(i))
        count = kill_after or 50
        spoolkit.wait_for(
            lambda: sum(1 for i in range(50) if answered(f"burst-{i}")) >= count, timeout=60
        )
        if not kill_after:
            spoolkit.wait_for(lambda: not fake.mailbox(GRAPH_ROOM).inbox, timeout=60)
            time.sleep(0.5)
        kill(proc)
        proc = start(config, env)
        wait_ready(port)
        spoolkit.wait_for(
            lambda: (
                all(updates(f"burst-{i}") for i in range(50)) and not fake.mailbox(GRAPH_ROOM).inbox
            ),
            timeout=120,
        )
        time.sleep(1.5)  # the echoes of the organizer updates have come and gone
        stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
        stack.close()
    for i in range(50):
        uid = f"burst-{i}"
        assert answered(uid) == 1, (uid, answered(uid))
        assert updates(uid) == 1, (uid, updates(uid))
    assert not fake.mails  # every answer went out as the response on the room's event
    assert fake.max_concurrent <= 4
