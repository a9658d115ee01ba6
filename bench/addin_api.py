"""Add-in API throughput: reservations per second and p50/p99 latency with 64 concurrent clients
for 10 s against `vmrsched serve` (a real process) whose store holds 100,000 conferences; in the
same run the same load against a bare aiohttp handler in its own process, and the ratio.

This machine's speed drifts by up to a factor of two within a minute, so the two are loaded in
alternating rounds (service, bare, service, bare, …; --rounds of seconds/rounds each) and the
ratio reported is the median of the rounds' ratios; the rates are the means over the rounds,
the percentiles over all their requests.

Then the personal-VMR case, against a fresh server for at most 8 s: the same clients asking for
the personal VMRs of random users of a 10,000-user directory file.

Prints one JSON line:
{"reservations_per_s": …, "p50_ms": …, "p99_ms": …, "bare_per_s": …, "ratio": …,
 "ratios": […], "personal_per_s": …, "personal_p99_ms": …, …}
Usage: python bench/addin_api.py [--conferences 100000] [--users 10000] [--clients 64]
       [--seconds 10] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from harness import free_port, pct, servers
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
        async with servers(config, port, BARE) as (url, bare_url):
            await load(url, args.clients, 1.0)  # warm up
            await load(bare_url, args.clients, 0.5)
            rounds = [
                (
                    await load(url, args.clients, args.seconds / args.rounds),
                    await load(bare_url, args.clients, args.seconds / args.rounds),
                )
                for _ in range(args.rounds)
            ]
        rate = round(statistics.fmean(r for (r, _), _ in rounds))
        latencies = sorted(t for (_, ts), _ in rounds for t in ts)
        bare_rate = round(statistics.fmean(r for _, (r, _) in rounds))
        bare_latencies = sorted(t for _, (_, ts) in rounds for t in ts)
        ratios = [round(r / b, 3) for (r, _), (b, _) in rounds]
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
