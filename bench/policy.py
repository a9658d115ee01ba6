"""Policy endpoint throughput: answers per second and p50/p99 latency for 64 concurrent
node-like clients (GET with a node's query parameters and Basic auth) against `vmrsched serve`
(a real process) whose store holds 100,000 aliases: a third inside their window now, a third
outside it, and foreign aliases asked as often. In the same run the same load against a bare
aiohttp handler in its own process, and the ratios.

Prints one JSON line:
{"answers_per_s": …, "p50_ms": …, "p99_ms": …, "bare_per_s": …, "bare_p99_ms": …, "ratio": …,
 "p99_vs_bare": …, …}
Usage: python bench/policy.py [--aliases 100000] [--clients 64] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import random
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from harness import free_port, pct, servers

from tests.configs import spool_toml
from vmrsched.rules.meetings import Action
from vmrsched.rules.recurrence import Schedule
from vmrsched.store import Store

PASSWORD = "bench-policy-password"
AUTH = {"Authorization": "Basic " + base64.b64encode(f"node:{PASSWORD}".encode()).decode()}
BARE = """
import sys
from aiohttp import web
async def handler(request):
    return web.json_response({"status": "success", "action": "continue", "result": {}})
app = web.Application()
app.router.add_get("/policy/v1/service/configuration", handler)
app.router.add_get("/readyz", lambda r: web.json_response({}))
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


def fill(store: Store, count: int, now: datetime) -> tuple[list[str], list[str]]:
    """`count` bound aliases: every other one live now, the rest next year. Returns the
    aliases of each kind."""
    live, later = [], []
    for i in range(count):
        record = store.reserve("81", 9, "video.example.com")
        inside = i % 2 == 0
        start = now - timedelta(minutes=10) if inside else now + timedelta(days=365, minutes=i)
        store.apply(
            Action(
                "bind",
                alias_id=record["alias_id"],
                meeting_uid=f"uid-{i}",
                sequence=0,
                schedule=Schedule(start, start + timedelta(hours=1)),
            ),
            {"name": f"Meeting {i}", "description": "Booked by o@example.com"},
        )
        (live if inside else later).append(record["alias"])
        if i % 5000 == 4999:
            store.commit()
    store.commit()
    store.compact()
    return live, later


def queries(live: list[str], later: list[str], rng: random.Random) -> list[str]:
    """Aliases as nodes send them: a third live, a third outside their window, a third foreign."""
    out = []
    for _ in range(30_000):
        kind = rng.randrange(3)
        if kind == 0:
            out.append(f"sip:{rng.choice(live)}")
        elif kind == 1:
            out.append(f"sip:{rng.choice(later)}")
        else:
            out.append(f"sip:someone{rng.randrange(10**6)}@example.com")
    return out


def params(alias: str) -> dict[str, str]:
    return {
        "protocol": "sip",
        "node_ip": "10.0.0.11",
        "remote_address": "198.51.100.7",
        "version_id": "36",
        "local_alias": alias,
        "remote_alias": "sip:alice@example.com",
        "call_direction": "dial_in",
        "trigger": "invite",
    }


async def load(
    url: str, clients: int, seconds: float, aliases: list[str]
) -> tuple[int, list[float], dict[str, int]]:
    latencies: list[float] = []
    actions: dict[str, int] = {}
    errors = 0
    feed = itertools.cycle(aliases)
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        stop = time.perf_counter() + seconds

        async def client() -> None:
            nonlocal errors
            while time.perf_counter() < stop:
                started = time.perf_counter()
                async with session.get(
                    f"{url}/policy/v1/service/configuration",
                    params=params(next(feed)),
                    headers=AUTH,
                ) as response:
                    body = await response.read()
                    if response.status != 200:
                        errors += 1
                        continue
                latencies.append(time.perf_counter() - started)
                action = json.loads(body)["action"]
                actions[action] = actions.get(action, 0) + 1

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - t0
    if errors:
        raise SystemExit(f"{errors} requests failed")
    return int(len(latencies) / elapsed), sorted(latencies), actions


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="vmrsched-bench-") as tmp:
        data = Path(tmp) / "data"
        store = Store(data / "store" / "default", rng=random.Random(5))
        live, later = fill(store, args.aliases, datetime.now(UTC))
        store.close()
        asked = queries(live, later, random.Random(7))
        port = free_port()
        config = Path(tmp) / "vmrsched.toml"
        server_keys = 'policy_username = "node"\npolicy_password_env = "BENCH_POLICY_PW"'
        config.write_text(spool_toml(data, port=port, server=server_keys))
        async with servers(config, port, BARE, {"BENCH_POLICY_PW": PASSWORD}) as (url, bare_url):
            await load(url, args.clients, 1.0, asked)  # warm up
            rate, latencies, actions = await load(url, args.clients, args.seconds, asked)
            bare_rate, bare_latencies, _ = await load(bare_url, args.clients, args.seconds, asked)
    p99, bare_p99 = pct(latencies, 0.99), pct(bare_latencies, 0.99)
    return {
        "answers_per_s": rate,
        "p50_ms": pct(latencies, 0.50),
        "p99_ms": p99,
        "bare_per_s": bare_rate,
        "bare_p99_ms": bare_p99,
        "ratio": round(rate / bare_rate, 3),
        "p99_vs_bare": round(p99 / bare_p99, 2),
        "answers": actions,
        "aliases": args.aliases,
        "clients": args.clients,
        "seconds": args.seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--aliases", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    print(json.dumps(asyncio.run(main_async(parser.parse_args()))))


if __name__ == "__main__":
    main()
