"""Failover of two `vmrsched serve` processes on one PostgreSQL, and the policy endpoint's
throughput on two instances against one.

Two instances (own data directories and ports, the same spool directory per integration, as a
mail server would share it; `lease_seconds` 2) on a throwaway cluster (tests/pgcluster.py). Once
the two integrations spread (one each), a burst of 500 meetings booked offline (a placeholder
token: the service draws the alias) is dropped into the shared spools, and the owner of one
integration is SIGKILLed mid-burst (once it answered a tenth of its share). Reported:

- takeover_s: from the SIGKILL (the process reaped) to the first answer the new owner wrote for
  that integration, from the outbox mails' mtime; owned_s: till the survivor's readiness
  (`GET /readyz`, polled every 20 ms) names the integration as owned; lease_left_s: how long the
  dead owner's lease still ran at the kill (on the database's clock);
- duplicates: meetings answered more than once (accepted or declined, across both outboxes);
- lost: meetings not answered within the deadline, plus aliases acknowledged and gone (an
  accepted answer whose meeting has no bound record in the database, or a record whose alias
  the answer does not carry), plus meetings bound twice.

Then the policy endpoint (GET /policy/v1/service/configuration, Basic auth) with concurrent
node-like clients in worker processes: against the survivor alone (it owns both integrations
then), and, after the killed instance is started again and the integrations spread, against both,
each asked only about the aliases of the integration it owns (in this release an instance's
policy index holds only the integrations it owns). Asked aliases: the burst's, live now.

Prints one JSON line:
{"takeover_s": …, "owned_s": …, "lease_s": 2.0, "duplicates": 0, "lost": 0,
 "policy_one_per_s": …, "policy_two_per_s": …, "policy_ratio": …, …}
Usage: python bench/failover.py [--meetings 500] [--lease 2] [--clients 64] [--seconds 5]
                                [--workers 2] [--deadline 90] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import email.parser
import email.policy
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from harness import free_port, pct
from policy import params

from tests import sharedkit

NAMES = ("alpha", "beta")
PASSWORD = "bench-policy-password"
AUTH = {"Authorization": "Basic " + base64.b64encode(f"node:{PASSWORD}".encode()).decode()}
POLICY = "/policy/v1/service/configuration"
HEADERS = email.parser.BytesHeaderParser(policy=email.policy.default)


def log(*args: object) -> None:
    print(*args, file=sys.stderr, flush=True)


def write_config(tmp: Path, instance: str, port: int, lease: float) -> Path:
    """One instance's config, with the policy endpoint's credentials."""
    server = 'policy_username = "node"\npolicy_password_env = "BENCH_POLICY_PW"'
    return sharedkit.write_config(tmp, instance, port, lease, NAMES, server)


class Instance:
    def __init__(self, tmp: Path, name: str, lease: float, env: dict[str, str]) -> None:
        self.name = name
        self.port = free_port()
        self.config = write_config(tmp, name, self.port, lease)
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        out = open(self.config.parent / "server.log", "ab")  # noqa: SIM115 - the process's
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vmrsched", "serve", "--config", str(self.config)],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
        )
        out.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def readiness(self) -> tuple[int, dict[str, Any]] | None:
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")
        except (OSError, ValueError):
            return None

    def owned(self) -> list[str]:
        got = self.readiness()
        if got is None or got[0] not in (200, 503):
            return []
        return list(got[1].get("owned", []))


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    raise SystemExit(f"not within {timeout} s: {what}")


class Outbox:
    """The answers (accepted or declined replies) in one integration's shared outbox, each
    mail read once: (meeting uid, outcome, mtime in ns, text)."""

    def __init__(self, spool: Path) -> None:
        self.folder = spool / "outbox"
        self.seen: dict[str, tuple[str, str, int, str] | None] = {}

    def quick(self) -> int:
        """How many answers the outbox holds, from the names alone (cheap, while polling)."""
        try:
            names = os.listdir(self.folder)
        except FileNotFoundError:
            return 0
        return sum(1 for n in names if "-accepted-" in n or "-declined-" in n)

    def scan(self) -> list[tuple[str, str, int, str]]:
        try:
            names = os.listdir(self.folder)
        except FileNotFoundError:
            names = []
        for name in names:
            if name in self.seen or not name.endswith(".eml"):
                continue
            path = self.folder / name
            data = path.read_bytes()
            headers = HEADERS.parsebytes(data)
            outcome = str(headers.get("X-Vmrsched-Outcome", ""))
            uid = str(headers.get("X-Vmrsched-Meeting-Uid", ""))
            if outcome in ("accepted", "declined"):
                text = data.decode("utf-8", "replace")
                self.seen[name] = (uid, outcome, path.stat().st_mtime_ns, text)
            else:
                self.seen[name] = None
        return [answer for answer in self.seen.values() if answer is not None]


def prepare(count: int, start: datetime) -> list[tuple[str, str, bytes]]:
    """`count` meeting requests booked offline, alternately for each integration, live now
    (the policy endpoint answers them with a conference): (integration, uid, data)."""
    from tests import spoolkit

    made = []
    for n in range(count):
        name = NAMES[n % len(NAMES)]
        data, uid = spoolkit.request(
            body=f"<p>TOK:-{n:08d}-0000-4000-8000-000000000000#</p>", start=start
        )
        made.append((name, uid, data))
    return made


# --- the policy load, in worker processes ----------------------------------------------------


async def _load(
    targets: list[tuple[str, list[str]]], clients: int, seconds: float
) -> dict[str, Any]:
    import aiohttp

    latencies: list[float] = []
    actions: Counter[str] = Counter()
    errors = 0
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        stop = time.perf_counter() + seconds

        async def client(n: int) -> None:
            nonlocal errors
            url, aliases = targets[n % len(targets)]
            i = n
            while time.perf_counter() < stop:
                alias = aliases[i % len(aliases)]
                i += 7
                started = time.perf_counter()
                async with session.get(f"{url}{POLICY}", params=params(alias), headers=AUTH) as r:
                    body = await r.read()
                    if r.status != 200:
                        errors += 1
                        continue
                latencies.append(time.perf_counter() - started)
                answer = json.loads(body)
                kind = answer.get("result", {}).get("service_type") or answer["action"]
                actions[f"{url.rsplit(':', 1)[1]}:{kind}"] += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(client(n) for n in range(clients)))
        elapsed = time.perf_counter() - t0
    return {"count": len(latencies), "elapsed": elapsed, "latencies": latencies,
            "actions": dict(actions), "errors": errors}  # fmt: skip


def _worker(args: tuple[list[tuple[str, list[str]]], int, float]) -> dict[str, Any]:
    before = time.process_time()
    got = asyncio.run(_load(*args))
    got["cpu"] = time.process_time() - before
    return got


def policy_load(
    targets: list[tuple[str, list[str]]], clients: int, seconds: float, workers: int
) -> dict[str, Any]:
    """Answers per second, p50 and p99 of `clients` concurrent clients spread over `workers`
    processes and over `targets` (URL, aliases it is asked about)."""
    per = [clients // workers + (1 if w < clients % workers else 0) for w in range(workers)]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        results = pool.map(_worker, [(targets, n, seconds) for n in per])
    latencies = sorted(x for r in results for x in r["latencies"])
    actions: Counter[str] = Counter()
    for r in results:
        actions.update(r["actions"])
    count = sum(r["count"] for r in results)
    elapsed = max(r["elapsed"] for r in results)
    return {
        "per_s": round(count / elapsed, 1),
        "p50_ms": pct(latencies, 0.50),
        "p99_ms": pct(latencies, 0.99),
        "answers": dict(sorted(actions.items())),
        "errors": sum(r["errors"] for r in results),
        "client_cpu_s_per_s": round(sum(r["cpu"] for r in results) / elapsed, 2),
    }


def measured(
    servers: list[Instance], targets: list[tuple[str, list[str]]], args: argparse.Namespace
) -> dict[str, Any]:
    """The policy load, with the servers' CPU time per answer and per second of the run."""
    pids = [i.proc.pid for i in servers if i.proc is not None]
    before = [cpu_seconds(p) for p in pids]
    got = policy_load(targets, args.clients, args.seconds, args.workers)
    used = [cpu_seconds(p) - b for p, b in zip(pids, before, strict=True)]
    answers = sum(got["answers"].values())
    wall = answers / got["per_s"]  # the load's own duration (the workers' start is idle)
    got["server_cpu_s_per_s"] = [round(u / wall, 2) for u in used]
    got["server_cpu_us_per_answer"] = round(sum(used) / max(1, answers) * 1e6, 1)
    return got


# --- the run ---------------------------------------------------------------------------------


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import psycopg

    from tests import pgcluster

    if pgcluster.binaries() is None:
        raise SystemExit(pgcluster.missing_reason())
    with pgcluster.running() as cluster:
        dsn = cluster.create_database("failover")
        env = {"VMRSCHED_DSN": dsn, "BENCH_POLICY_PW": PASSWORD}
        one = Instance(tmp, "one", args.lease, env)
        two = Instance(tmp, "two", args.lease, env)
        try:
            return scenario(args, tmp, dsn, one, two, psycopg)
        finally:
            for instance in (one, two):
                instance.stop()


def scenario(
    args: argparse.Namespace, tmp: Path, dsn: str, one: Instance, two: Instance, psycopg: Any
) -> dict[str, Any]:
    loadavg = [round(x, 2) for x in os.getloadavg()]
    one.start()  # one takes both before two starts: then they spread
    wait_for(lambda: one.owned() == list(NAMES), 120, "the first instance owns both")
    two.start()
    wait_for(
        lambda: len(one.owned()) == 1 and len(two.owned()) == 1, 120, "the integrations spread"
    )
    victim = one.owned()[0]
    log(f"spread: one owns {one.owned()}, two owns {two.owned()}; the victim is {victim}")

    start = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=10)
    made = prepare(args.meetings, start)
    outboxes = {name: Outbox(tmp / "spool" / name) for name in NAMES}
    share = sum(1 for name, _, _ in made if name == victim)

    seen_owned: list[float] = []
    watching = threading.Event()

    def watch() -> None:  # when the survivor first says it owns the victim
        while not watching.is_set():
            if victim in two.owned():
                seen_owned.append(time.monotonic())
                return
            time.sleep(0.02)

    def drop_all() -> None:
        from tests import spoolkit

        for name, _, data in made:
            spoolkit.drop(tmp / "spool" / name / "inbox", data)

    dropper = threading.Thread(target=drop_all)
    burst_started = time.monotonic()
    dropper.start()
    threshold = max(1, share // 10)
    wait_for(lambda: outboxes[victim].quick() >= threshold, 60, "the victim answers")
    assert one.proc is not None
    one.proc.send_signal(signal.SIGKILL)
    one.proc.wait(10)
    killed_wall_ns, killed = time.time_ns(), time.monotonic()
    threading.Thread(target=watch, daemon=True).start()
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT extract(epoch FROM expires - clock_timestamp()) FROM vmrsched_leases"
            " WHERE integration = %s",
            (victim,),
        ).fetchone()
    lease_left = float(row[0]) if row else None
    answered_at_kill = outboxes[victim].quick()
    dropped_at_kill = sum(
        len(list((tmp / "spool" / name / "inbox").glob("*.ics"))) for name in NAMES
    )
    log(
        f"SIGKILL of one at {killed - burst_started:.2f} s into the burst: {answered_at_kill}"
        f" of {share} {victim} meetings answered, lease left {lease_left}"
    )
    dropper.join()

    uids = {uid for _, uid, _ in made}

    def counts() -> Counter[str]:
        got: Counter[str] = Counter()
        for name in NAMES:
            for uid, _, _, _ in outboxes[name].scan():
                if uid in uids:
                    got[uid] += 1
        return got

    try:
        wait_for(lambda: len(counts()) == len(uids), args.deadline, "every meeting answered")
    except SystemExit as exc:
        log(str(exc))
    done = time.monotonic()
    watching.set()
    answered = counts()
    after = sorted(m for _, _, m, _ in outboxes[victim].scan() if m > killed_wall_ns)
    takeover = (after[0] - killed_wall_ns) / 1e9 if after else None
    owned_s = seen_owned[0] - killed if seen_owned else None

    # what the database holds against what was acknowledged
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT integration, record->>'meeting_uid', alias, numeric_alias"
            " FROM vmrsched_records WHERE record->>'status' = 'bound' AND NOT archived"
        ).fetchall()
    bound: dict[str, list[tuple[str, str, str]]] = {}
    for integration, uid, alias, numeric in rows:
        bound.setdefault(uid, []).append((integration, alias, numeric))
    bound_twice = sum(1 for v in bound.values() if len(v) > 1)
    gone = 0
    outcomes: Counter[str] = Counter()
    for name in NAMES:
        for uid, outcome, _, text in outboxes[name].scan():
            outcomes[outcome] += 1
            if outcome != "accepted" or uid not in uids:
                continue
            held = bound.get(uid, [])
            if not any(i == name and (a in text or n in text) for i, a, n in held):
                gone += 1
    unanswered = sum(1 for uid in uids if answered[uid] == 0)
    duplicates = sum(1 for uid in uids if answered[uid] > 1)
    log(f"answered: {dict(outcomes)}, unanswered {unanswered}, duplicates {duplicates}")

    # policy: the survivor alone, then both once the killed one is back and they spread
    aliases = {name: [a for v in bound.values() for i, a, _ in v if i == name] for name in NAMES}
    asked = [f"sip:{a}" for name in NAMES for a in aliases[name]]
    wait_for(lambda: two.owned() == list(NAMES), 30, "the survivor owns both")
    policy_load([(two.url, asked)], args.clients, 1.0, args.workers)  # warm up
    alone = measured([two], [(two.url, asked)], args)
    log(f"policy, one instance: {alone}")
    one.start()
    wait_for(
        lambda: len(one.owned()) == 1 and len(two.owned()) == 1, 120, "the integrations spread"
    )
    wait_for(
        lambda: all((r := i.readiness()) is not None and r[0] == 200 for i in (one, two)),
        60,
        "both ready",
    )
    targets = [(i.url, [f"sip:{a}" for n in i.owned() for a in aliases[n]]) for i in (one, two)]
    policy_load(targets, args.clients, 1.0, args.workers)  # warm up
    both = measured([one, two], targets, args)
    log(f"policy, two instances: {both}")
    owned_after = {i.name: i.owned() for i in (one, two)}

    return {
        "takeover_s": round(takeover, 3) if takeover is not None else None,
        "takeover_by": "outbox mtime: the first answer in the victim's outbox written after "
        "the SIGKILL (the old owner reaped)",
        "owned_s": round(owned_s, 3) if owned_s is not None else None,
        "lease_s": args.lease,
        "lease_left_s": round(lease_left, 3) if lease_left is not None else None,
        "duplicates": duplicates,
        "lost": unanswered + gone + bound_twice,
        "unanswered": unanswered,
        "acknowledged_gone": gone,
        "bound_twice": bound_twice,
        "meetings": len(uids),
        "answers": dict(outcomes),
        "bound_records": len(rows),
        "victim": victim,
        "victim_answered_at_kill": answered_at_kill,
        "victim_share": share,
        "inbox_left_at_kill": dropped_at_kill,
        "kill_after_s": round(killed - burst_started, 2),
        "all_answered_s": round(done - killed, 2),
        "policy_one_per_s": alone["per_s"],
        "policy_two_per_s": both["per_s"],
        "policy_ratio": round(both["per_s"] / alone["per_s"], 3),
        "policy_one": alone,
        "policy_two": both,
        "owned_after": owned_after,
        "clients": args.clients,
        "client_workers": args.workers,
        "seconds": args.seconds,
        "cpus": os.cpu_count(),
        "loadavg_at_start": loadavg,
        "note": "with two instances each is asked about its own integration's aliases (the "
        "burst's, live now; every instance also answers for the others' from the database); "
        "with one, the survivor owns both and is asked about all. Clients, both servers and "
        "PostgreSQL share this machine's CPUs",
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--meetings", type=int, default=500)
    parser.add_argument("--lease", type=float, default=2.0)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=2, help="client processes")
    parser.add_argument("--deadline", type=float, default=90.0)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vmrsched-bench-failover-"))
    try:
        result = run(args, tmp)
    finally:
        if args.keep:
            log(f"kept {tmp}")
        else:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
