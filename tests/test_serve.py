"""`vmrsched serve` as a real process: the HTTP endpoints, invite, SIGHUP reload, SIGTERM
shutdown, and SIGKILL in the middle of 500 requests."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import spoolkit
from tests.serving import ROOT, free_port, get, sends, start, wait_ready, write_config
from vmrsched.store import Store

pytestmark = pytest.mark.slow


def count(folder: Path, pattern: str = "*") -> int:
    return len(list(folder.glob(pattern))) if folder.exists() else 0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    port = free_port()
    config = tmp_path / "vmrsched.toml"
    write_config(config, port)
    proc = start(config)
    try:
        yield proc, port, config
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_serve_invite_metrics_reload_and_sigterm(
    server: tuple[subprocess.Popen[bytes], int, Path],
) -> None:
    proc, port, config = server
    ready = wait_ready(port)
    assert ready["integrations"] == {
        "default": {"state": "running", "restarts": 0, "error": "", "alarms": []}
    }
    assert get(port, "/healthz") == (200, b'{"status": "ok"}')

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "vmrsched",
            "invite",
            "--config",
            str(config),
            "--integration",
            "default",
            "--subject",
            "Board meeting",
            "--attendee",
            "bob@example.com",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    uid = out.stdout.split("(UID ")[1].rstrip(")\n")
    spool = config.parent / "data" / "spool" / "default"
    spoolkit.wait_for(lambda: len(spoolkit.answers_for(spool, uid)) == 2)
    mails = {m.outcome: m for m in spoolkit.answers_for(spool, uid)}
    assert mails["accepted"].reason == "new_single"
    assert mails["updated"].reason == "placeholder_replaced"

    status, body = get(port, "/metrics")
    text = body.decode()
    assert status == 200
    assert (
        'vmrsched_meeting_requests_total{integration="default",outcome="accepted",'
        'reason="new_single"} 1.0'
    ) in text
    assert 'vmrsched_integration_up{integration="default"} 1.0' in text
    assert 'vmrsched_aliases_allocated_total{integration="default"} 1.0' in text

    # SIGHUP with a second integration added
    config.write_text(
        config.read_text()
        + """
[[integrations]]
name = "second"
[integrations.exchange]
mailbox_name = "Room 2"
mailbox_email = "vmr2@example.com"
[integrations.single_use]
alias_prefix = "two"
[integrations.addin]
token_validation = "none"
"""
    )
    proc.send_signal(signal.SIGHUP)
    spoolkit.wait_for(lambda: "second" in json.loads(get(port, "/readyz")[1])["integrations"])

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    text = (config.parent / "server.log").read_text()
    logs = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    decision = next(entry for entry in logs if entry.get("meeting_uid") == uid)
    assert decision["outcome"] == "accepted" and decision["reason"] == "new_single"
    assert decision["integration"] == "default" and decision["correlation_id"]
    assert any(entry["message"] == "stopped" for entry in logs)


def test_sigkill_mid_way_through_500_requests_loses_nothing(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "vmrsched.toml"
    write_config(config, port)
    spool = tmp_path / "data" / "spool" / "default"
    uids = []
    for i in range(500):
        token = f"TOK:-00000000-0000-4000-8000-{i:012d}#"
        data, uid = spoolkit.request(body=f"<p>{token}</p>", subject=f"Meeting {i}")
        spoolkit.drop(spool / "inbox", data, name=f"req-{i:04d}.ics")
        uids.append(uid)

    proc = start(config)
    try:
        spoolkit.wait_for(lambda: count(spool / "processed") >= 120, timeout=60)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done_before = count(spool / "processed")
        assert done_before < 500, "the kill came too late to test anything"
    finally:
        if proc.poll() is None:
            proc.kill()
    proc = start(config)
    try:
        spoolkit.wait_for(lambda: not any((spool / "inbox").iterdir()), timeout=120)
        wait_ready(port)
        spoolkit.wait_for(lambda: count(spool / "outbox", "*.eml") >= 1000, timeout=60)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()

    mails = spoolkit.outbox(spool)
    by_uid: dict[str, list[spoolkit.Mail]] = {}
    for mail in mails:
        by_uid.setdefault(mail.headers["X-Vmrsched-Meeting-Uid"], []).append(mail)
    for uid in uids:
        outcomes = sorted(m.outcome for m in by_uid.get(uid, []))
        assert outcomes == ["accepted", "updated"], (uid, outcomes)
    assert len(mails) == 1000
    counts = sends(config)  # every hand-over to the mailbox, over both runs
    for uid in uids:
        assert (counts[(uid, "reply")], counts[(uid, "update")]) == (1, 1), uid
    assert not any((spool / "failed").iterdir())

    store = Store(tmp_path / "data" / "store" / "default")
    records = list(store.records())
    bound = [r for r in records if r["status"] == "bound"]
    assert len(bound) == 500
    assert len({r["meeting_uid"] for r in bound}) == 500  # one alias per meeting
    assert len({r["numeric_alias"] for r in records}) == len(records)  # no alias twice
    aliases_in_updates = {
        m.html.split("PXPS:-")[1].split("#")[0] for m in mails if m.outcome == "updated"
    }
    assert aliases_in_updates == {r["alias_id"] for r in bound}
    os.sync()


def test_a_second_serve_on_the_same_data_dir_refuses_to_start(
    server: tuple[subprocess.Popen[bytes], int, Path],
) -> None:
    proc, port, config = server
    wait_ready(port)
    second_config = config.parent / "second.toml"
    write_config(second_config, free_port())
    second = subprocess.run(
        [sys.executable, "-m", "vmrsched", "serve", "--config", str(second_config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 1
    assert "in use by another process" in second.stderr
    assert proc.poll() is None and wait_ready(port)["status"] == "ready"


def test_idle_connections_cannot_starve_health_checks_or_the_mailbox(tmp_path: Path) -> None:
    """1,500 connections that never send a byte, to a server allowed 1,024 descriptors, with a
    cap of 100 and a 1 s header deadline: health checks answer, meetings are answered, and the
    log stays small."""
    port = free_port()
    config = tmp_path / "vmrsched.toml"
    write_config(config, port)
    text = config.read_text().replace(
        "[server]\n", "[server]\nmax_connections = 100\nheader_timeout_seconds = 1.0\n", 1
    )
    config.write_text(text)
    proc = start(config, fd_limit=1024)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    idle: list[socket.socket] = []
    try:
        wait_ready(port)
        deadline = time.monotonic() + 20
        for _ in range(1500):
            if time.monotonic() > deadline:
                break  # bounded: a server that stopped accepting fails below
            sock = socket.socket()
            sock.settimeout(1)
            try:
                sock.connect(("127.0.0.1", port))
            except OSError:
                sock.close()
                continue
            idle.append(sock)
        spool = tmp_path / "data" / "spool" / "default"
        data, uid = spoolkit.request(body="<p>TOK:-00000000-0000-4000-8000-000000000777#</p>")
        spoolkit.drop(spool / "inbox", data)
        started = time.monotonic()
        wait_ready(port, timeout=10)  # the silent ones are closed after a second
        assert time.monotonic() - started < 8
        spoolkit.wait_for(lambda: len(spoolkit.answers_for(spool, uid)) == 2, timeout=10)
        open_fds = len(os.listdir(f"/proc/{proc.pid}/fd"))
        assert open_fds < 100 + 200, open_fds
    finally:
        for sock in idle:
            sock.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert (tmp_path / "server.log").stat().st_size < 200_000


def test_a_request_on_a_connection_opened_before_sigterm_is_answered(
    server: tuple[subprocess.Popen[bytes], int, Path],
) -> None:
    """A client connected just before SIGTERM and sends its reservation just after (the crash
    audit's race: its request hung to the client's timeout and the stop took 12 s). The
    connection was taken, so its request is answered (and durable), and the stop is prompt."""
    proc, port, _ = server
    wait_ready(port)
    body = b"{}"
    request = (
        b"POST /api/addin/v1/default/single-use-vmrs HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n" + body
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        time.sleep(0.2)  # accepted by the service, nothing sent yet
        stopping = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.1)
        sock.sendall(request)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 201"), answer[:200]
    assert proc.wait(timeout=30) == 0
    assert time.monotonic() - stopping < 5
