"""What the HTTP benchmarks share: `vmrsched serve` and a bare aiohttp app, each a real process
on a free port, ready before the load starts and stopped after it; and percentiles."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_ready(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(f"{url}/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise SystemExit(f"{url} did not become ready")


def pct(values: list[float], q: float) -> float:
    return round(values[max(0, int(len(values) * q) - 1)] * 1000, 2)


@contextlib.asynccontextmanager
async def servers(
    config: Path, port: int, bare_script: str, env: dict[str, str] | None = None
) -> AsyncIterator[tuple[str, str]]:
    """(service URL, bare URL), both ready. `config` listens on `port`; the server's log goes
    beside it; `bare_script` is Python taking its port as its only argument."""
    bare_port = free_port()
    log = open(config.parent / "server.log", "wb")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [sys.executable, "-m", "vmrsched", "serve", "--config", str(config)],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    bare = subprocess.Popen([sys.executable, "-c", bare_script, str(bare_port)])
    try:
        url, bare_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{bare_port}"
        await wait_ready(url, timeout=120)
        await wait_ready(bare_url)
        yield url, bare_url
    finally:
        server.terminate()
        bare.terminate()
        server.wait(timeout=60)
        bare.wait(timeout=10)
        log.close()
