"""The service as a separate process, as admins run it: start it on a config file, wait until it
is ready, read what it logged."""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

from tests.configs import spool_toml

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def command(
    config: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`vmrsched ARGS --config CONFIG` as an admin runs it: a real process from the project's
    folder, with `env` added to this one's environment."""
    return subprocess.run(
        [sys.executable, "-m", "vmrsched", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def write_config(path: Path, port: int, extra: str = "") -> None:
    path.write_text(
        spool_toml(
            path.parent / "data",
            port=port,
            server='log_format = "json"',
            integration="[integrations.spool]\npoll_interval_seconds = 0.05\n" + extra,
        )
    )


def start(
    config: Path, env: dict[str, str] | None = None, fd_limit: int | None = None
) -> subprocess.Popen[bytes]:
    """Start the server logging to server.log beside the config (a pipe nobody reads would fill
    up and block the server); `env` adds variables (secrets) to the inherited environment."""
    log = open(config.parent / "server.log", "ab")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        [sys.executable, "-m", "vmrsched", "serve", "--config", str(config)],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        preexec_fn=(lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit)))
        if fd_limit
        else None,
    )


def sends(config: Path) -> Counter[tuple[str, str]]:
    """(meeting uid, kind) -> how many times the service handed such a message to the mailbox,
    over every run, from its JSON log: a "sent" line each, or, for one handed over just before
    a SIGKILL took the process before its "sent" line, the next run's "had reached the
    mailbox" (a message logged as sent is marked done first, so it is never found again)."""
    counts: Counter[tuple[str, str]] = Counter()
    for line in (config.parent / "server.log").read_text().splitlines():
        if not line.startswith("{"):
            continue
        entry = json.loads(line)
        if entry.get("logger") != "vmrsched.notifier":
            continue
        words = entry["message"].split()
        if words[0] == "sent":
            counts[(entry["meeting_uid"], words[1])] += 1
        elif "had reached the mailbox" in entry["message"]:
            counts[(entry["meeting_uid"], words[0])] += 1
    return counts


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_ready(port: int, timeout: float = 20) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status, body = get(port, "/readyz")
            if status == 200:
                return dict(json.loads(body))
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("server did not become ready")
