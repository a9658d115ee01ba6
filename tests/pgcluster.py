"""A throwaway PostgreSQL cluster for the tests: Debian's server binaries, `initdb` in a fresh
directory, the server on a free loopback port, stopped and removed at the end.

PostgreSQL refuses to run as root and CI runs as root, so there the cluster belongs to an
unprivileged user (`nobody`) and every server command runs as that user through `runuser`; its
directory lives in a world-traversable temporary directory of its own, since pytest's temporary
directories are private to root. Tests that need the cluster skip, with the reason, only when the
binaries are absent (`.ci/run` installs them, so CI always runs them)."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOTS = (Path("/usr/lib/postgresql"),)
UNPRIVILEGED = "nobody"


def binaries() -> Path | None:
    """The newest installed server's bin directory (Debian: /usr/lib/postgresql/<major>/bin)."""
    found: list[tuple[int, Path]] = []
    for root in ROOTS:
        if not root.is_dir():
            continue
        for version in root.iterdir():
            bindir = version / "bin"
            if (bindir / "initdb").exists() and version.name.isdigit():
                found.append((int(version.name), bindir))
    if not found:
        return None
    return max(found)[1]


def missing_reason() -> str:
    return "PostgreSQL server binaries are not installed (Debian: apt-get install postgresql)"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Cluster:
    """One PostgreSQL server on 127.0.0.1:`port`, superuser `postgres`, trust authentication
    on loopback (a test database: nothing to protect, nothing kept)."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="vmrsched-pg-"))
        os.chmod(self.root, 0o755)
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = _free_port()
        self._as_root = os.geteuid() == 0
        if self._as_root:
            owner = pwd.getpwnam(UNPRIVILEGED)
            os.chown(self.root, owner.pw_uid, owner.pw_gid)

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"

    def dsn_for(self, database: str) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={database}"

    def _run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [str(self.bindir / command[0]), *command[1:]]
        if self._as_root:
            argv = ["runuser", "-u", UNPRIVILEGED, "--", *argv]
        return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=120)

    def init(self) -> None:
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-instructions",
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} "
            "-c max_connections=200 -c shared_buffers=64MB"
        )
        done = self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-o",
            options,
            "-w",
            "start",
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"PostgreSQL did not start: {done.stderr}\n{self.server_log()}")
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready = self._run("pg_isready", "-h", "127.0.0.1", "-p", str(self.port), check=False)
            if ready.returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"PostgreSQL is not ready after {timeout} s:\n{self.server_log()}")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def restart(self) -> None:
        """Stop (fast: connections are cut, as when a database restarts) and start again."""
        self.stop()
        self.start()

    def create_database(self, name: str) -> str:
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        return self.dsn_for(name)

    def server_log(self) -> str:
        try:
            return self.log.read_text()[-4000:]
        except OSError:
            return ""

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def running() -> Iterator[Cluster]:
    """A started cluster, stopped and removed afterwards. Raises when the binaries are absent;
    callers skip first (see `binaries`)."""
    bindir = binaries()
    if bindir is None:
        raise RuntimeError(missing_reason())
    cluster = Cluster(bindir)
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.stop("immediate")
        cluster.remove()
