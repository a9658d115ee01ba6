"""Add-in API throughput: reservations per second and p50/p99 latency with 64 concurrent clients
for 10 s against `vmrsched serve` (a real process) whose store holds 100,000 conferences; in the
same run the same load against a bare aiohttp handler in its own process, and the ratio.

Prints one JSON line:
{"reservations_per_s": …, "p50_ms": …, "p99_ms": …, "bare_per_s": …, "ratio": …, …}
Usage: python bench/addin_api.py [--conferences 100000] [--clients 64] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
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


async def load(url: str, clients: int, seconds: float) -> tuple[int, list[float]]:
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        stop = time.perf_counter() + seconds

        async def client() -> None:
            nonlocal errors
            while time.perf_counter() < stop:
                started = time.perf_counter()
                async with session.post(
                    f"{url}/api/addin/v1/default/single-use-vmrs", json={"subject": "Bench"}
                ) as response:
                    await response.read()
                    if response.status != 201:
                        errors += 1
                        continue
                latencies.append(time.perf_counter() - started)

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - t0
    if errors:
        raise SystemExit(f"{errors} requests failed")
    return int(len(latencies) / elapsed), sorted(latencies)


async def main_async(args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="vmrsched-bench-") as tmp:
        data = Path(tmp) / "data"
        store = Store(data / "store" / "default", rng=random.Random(5))
        fill(store, args.conferences)
        store.close()
        port = free_port()
        config = Path(tmp) / "vmrsched.toml"
        config.write_text(spool_toml(data, port=port, server="rate_limit_per_minute = 100000"))
        async with servers(config, port, BARE) as (url, bare_url):
            await load(url, args.clients, 1.0)  # warm up
            rate, latencies = await load(url, args.clients, args.seconds)
            bare_rate, bare_latencies = await load(bare_url, args.clients, args.seconds)
    return {
        "reservations_per_s": rate,
        "p50_ms": pct(latencies, 0.50),
        "p99_ms": pct(latencies, 0.99),
        "bare_per_s": bare_rate,
        "ratio": round(rate / bare_rate, 3),
        "bare_p99_ms": pct(bare_latencies, 0.99),
        "conferences": args.conferences,
        "clients": args.clients,
        "seconds": args.seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--conferences", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    print(json.dumps(asyncio.run(main_async(parser.parse_args()))))


if __name__ == "__main__":
    main()
