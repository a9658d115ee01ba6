"""Add-in API throughput: reservations per second and p50/p99 latency with 64 concurrent clients
for 10 s against `vmrsched serve` (a real process) whose store holds 100,000 conferences; in the
same run the same load against a bare aiohttp handler in its own process, and the ratio.

This machine's speed drifts by up to a factor of two within a minute, so the two are loaded in
alternating rounds (service, bare, service, bare, …; --rounds of seconds/rounds each) and the
ratio reported is the median of the rounds' ratios; the rates are the means over the rounds,
the percentiles over all their requests.

A third server in the same rounds, `durable`, is the least a durable reservation can cost in
Python: the bare handler, but its answer waits for a group commit in a worker thread (every
request of one event-loop turn handed over at once; the thread writes the batch's JSON lines,
fsyncs them, and wakes the loop once per batch), with no actor, store, check or rendering. Its
ratio to bare (`durable_ratio`) shows what durability and the thread hop cost by themselves on
this machine, so that the service's ratio can be read against it.

Then the personal-VMR case, against a fresh server for at most 8 s: the same clients asking for
the personal VMRs of random users of a 10,000-user directory file.

Prints one JSON line:
{"reservations_per_s": …, "p50_ms": …, "p99_ms": …, "bare_per_s": …, "ratio": …,
 "ratios": […], "durable_per_s": …, "durable_ratio": …, "personal_per_s": …, …}
Usage: python bench/addin_api.py [--conferences 100000] [--users 10000] [--clients 64]
       [--seconds 10] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from harness import free_port, pct, servers, wait_ready
from store import fill

from tests.configs import spool_toml
from vmrsched.store import Store

PERSONAL_SECONDS = 8.0
BARE = """
import sys
from aiohttp import web
async def handler(request):
    return web.json_response({"alias": "vmr123456@video.example.com"}, status=201)
app = web.Application()
app.router.add_post("/api/addin/v1/default/single-use-vmrs", handler)
app.router.add_get("/readyz", lambda r: web.json_response({}))
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


DURABLE = """
import asyncio, json, os, queue, sys, threading, uuid
from aiohttp import web
handed: "queue.SimpleQueue[list[asyncio.Future[dict[str, str]]]]" = queue.SimpleQueue()
waiting: list[asyncio.Future[dict[str, str]]] = []
def commit(loop, fd):
    while True:
        batch = handed.get()
        while not handed.empty():
            batch += handed.get()
        records = [{"alias_id": str(uuid.uuid4())} for _ in batch]
        os.write(fd, b"".join(json.dumps(r).encode() + b"\\n" for r in records))
        os.fsync(fd)
        loop.call_soon_threadsafe(settle, list(zip(batch, records)))
def settle(done):
    for future, record in done:
        if not future.done():
            future.set_result(record)
def hand_over():
    global waiting
    batch, waiting = waiting, []
    handed.put(batch)
async def handler(request):
    await request.read()
    loop = asyncio.get_running_loop()
    future = loop.create_future()
    if not waiting:
        loop.call_soon(hand_over)
    waiting.append(future)
    return web.json_response(await future, status=201)
async def start(app):
    fd = os.open(sys.argv[2], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    loop = asyncio.get_running_loop()
    threading.Thread(target=commit, args=(loop, fd), daemon=True).start()
app = web.Application()
app.on_startup.append(start)
app.router.add_post("/api/addin/v1/default/single-use-vmrs", handler)
app.router.add_get("/readyz", lambda r: web.json_response({}))
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


async def load(
    url: str, clients: int, seconds: float, personal: list[str] | None = None
) -> tuple[int, list[float]]:
    """(requests answered per second, their latencies sorted); `personal`: ask for these users'
    personal VMRs (GET) instead of reserving (POST)."""
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        stop = time.perf_counter() + seconds

        async def client() -> None:
            nonlocal errors
            while time.perf_counter() < stop:
                started = time.perf_counter()
                if personal:
                    request = session.get(
                        f"{url}/api/addin/v1/default/personal-vmrs",
                        params={"user": random.choice(personal)},
                    )
                    expected = 200
                else:
                    request = session.post(
                        f"{url}/api/addin/v1/default/single-use-vmrs", json={"subject": "Bench"}
                    )
                    expected = 201
                async with request as response:
                    await response.read()
                    if response.status != expected:
                        errors += 1
                        continue
                latencies.append(time.perf_counter() - started)

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - t0
    if errors:
        raise SystemExit(f"{errors} requests failed")
    return int(len(latencies) / elapsed), sorted(latencies)


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="vmrsched-bench-") as tmp:
        data = Path(tmp) / "data"
        store = Store(data / "store" / "default", rng=random.Random(5))
        fill(store, args.conferences)
        store.close()
        port = free_port()
        config = Path(tmp) / "vmrsched.toml"
        users = directory(Path(tmp) / "vmrs.toml", args.users)
        text = spool_toml(
            data,
            port=port,
            server="rate_limit_per_minute = 100000",
            integration=f'[integrations.personal]\ndirectory_file = "{Path(tmp) / "vmrs.toml"}"\n',
        )
        config.write_text(
            text.replace('name = "default"', 'name = "default"\nenable_personal_vmrs = true', 1)
        )
        durable_port = free_port()
        durable = subprocess.Popen(
            [sys.executable, "-c", DURABLE, str(durable_port), str(Path(tmp) / "journal")]
        )
        try:
            durable_url = f"http://127.0.0.1:{durable_port}"
            await wait_ready(durable_url)
            async with servers(config, port, BARE) as (url, bare_url):
                await load(url, args.clients, 1.0)  # warm up
                await load(bare_url, args.clients, 0.5)
                await load(durable_url, args.clients, 0.5)
                share = args.seconds / args.rounds
                rounds = [
                    (
                        await load(url, args.clients, share),
                        await load(bare_url, args.clients, share),
                        await load(durable_url, args.clients, share),
                    )
                    for _ in range(args.rounds)
                ]
        finally:
            durable.terminate()
            durable.wait(timeout=10)
        rate = round(statistics.fmean(r for (r, _), _, _ in rounds))
        latencies = sorted(t for (_, ts), _, _ in rounds for t in ts)
        bare_rate = round(statistics.fmean(r for _, (r, _), _ in rounds))
        bare_latencies = sorted(t for _, (_, ts), _ in rounds for t in ts)
        ratios = [round(r / b, 3) for (r, _), (b, _), _ in rounds]
        durable_ratios = [round(d / b, 3) for _, (b, _), (d, _) in rounds]
        durable_latencies = sorted(t for _, _, (_, ts) in rounds for t in ts)
        # Every request is one user's, and the per-user limit (100,000 a minute at most, bursts
        # included) ran out in the personal phase once the service answered 5,000 a second:
        # that phase gets a fresh server and lasts at most PERSONAL_SECONDS.
        async with servers(config, port, BARE) as (url, bare_url):
            await load(url, args.clients, 0.5, users)  # warm up
            personal_rate, personal = await load(
                url, args.clients, min(args.seconds, PERSONAL_SECONDS), users
            )
    return {
        "reservations_per_s": rate,
        "p50_ms": pct(latencies, 0.50),
        "p99_ms": pct(latencies, 0.99),
        "bare_per_s": bare_rate,
        "ratio": round(statistics.median(ratios), 3),
        "ratios": ratios,
        "bare_p99_ms": pct(bare_latencies, 0.99),
        "durable_per_s": round(statistics.fmean(d for _, _, (d, _) in rounds)),
        "durable_ratio": round(statistics.median(durable_ratios), 3),
        "durable_p99_ms": pct(durable_latencies, 0.99),
        "personal_per_s": personal_rate,
        "personal_p50_ms": pct(personal, 0.50),
        "personal_p99_ms": pct(personal, 0.99),
        "directory_users": args.users,
        "conferences": args.conferences,
        "clients": args.clients,
        "seconds": args.seconds,
        "rounds": args.rounds,
    }


def directory(path: Path, count: int) -> list[str]:
    """A directory file of `count` users with one to three rooms each; their emails."""
    rng = random.Random(11)
    lines, emails = [], []
    for i in range(count):
        email = f"user{i}@example.com"
        emails.append(email)
        lines.append(f'[[users]]\nemail = "{email}"')
        for j in range(rng.randint(1, 3)):
            lines.append(
                f'[[users.vmrs]]\nname = "Room {i}.{j}"\ndescription = "Room {j} of user {i}"\n'
                f'aliases = ["room{i}.{j}@video.example.com", "8{i:06d}{j}", "room{i}.{j}"]\n'
                f'pin = "{rng.randint(1000, 9999)}"\nallow_guests = {str(j == 0).lower()}'
            )
    path.write_text("\n".join(lines) + "\n")
    return emails


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--conferences", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=5)
    print(json.dumps(asyncio.run(main_async(parser.parse_args()))))


if __name__ == "__main__":
    main()
