"""Durable reservations per second and p99 latency with 64 concurrent requesters, over a store
already holding 100,000 conferences, and the time to reload that store.

One writer thread owns the store (as the AliasAllocator actor does) and group-commits: it takes
every request waiting, reserves each, makes them durable at once (the file store: one fsync;
the database: one transaction, fenced by the integration's lease as the service fences it),
then answers them all. A requester's latency runs from submitting to receiving its durable
answer. The store is driven directly, not through the allocator actor, on either backend.

--backend file (the default) prints one JSON line:
  {"reservations_per_s": …, "p99_ms": …, "reload_s": …, …}
--backend postgresql starts a throwaway PostgreSQL cluster (tests/pgcluster.py; fsync and
synchronous_commit on, as initdb leaves them), fills 100,000 records through the store in
transactions of 5,000, reopens it (reload_s: loading every record), measures the same load, and
in the same run measures the file store; one JSON line:
  {"backend": "postgresql", "reservations_per_s": …, "p99_ms": …, "reload_s": …,
   "file": {…the file store's figures…}, "ratio_per_s": …, "ratio_p99": …, …}
Usage: python bench/store.py [--backend file|postgresql] [--conferences 100000]
                             [--requesters 64] [--seconds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vmrsched.rules.meetings import Action
from vmrsched.rules.recurrence import Schedule
from vmrsched.store import Store, StoreWrites

# the targets for the shared database
PG_TARGET_PER_S = 5000
PG_TARGET_P99_MS = 20.0
INTEGRATION = "bench"


def fill(store: StoreWrites, count: int) -> None:
    start = datetime(2030, 1, 1, 9, tzinfo=UTC)
    for i in range(count):
        rec = store.reserve("vmr", 9, "video.example.com")
        when = start + timedelta(minutes=i)
        store.apply(
            Action(
                "bind",
                alias_id=rec["alias_id"],
                meeting_uid=f"uid-{i}",
                sequence=0,
                schedule=Schedule(when, when + timedelta(hours=1)),
            ),
            {"name": f"Meeting {i}", "organizer_email": "o@example.com", "subject": f"Subject {i}"},
        )
        if i % 5000 == 4999:
            store.commit()
    store.commit()
    store.compact()


Run = tuple[list[float], list[int], float, list[float]]


def measure(store: StoreWrites, requesters: int, seconds: float) -> Run:
    """(sorted latencies, batch sizes, elapsed, commit times) of `requesters` asking one
    group-committing writer for reservations during `seconds`."""
    requests: queue.Queue[tuple[float, threading.Event, list[float]] | None] = queue.Queue()
    stop = threading.Event()
    latencies: list[float] = []
    lock = threading.Lock()
    batches: list[int] = []
    commits: list[float] = []
    failed: list[BaseException] = []

    def writer() -> None:
        while True:
            first = requests.get()
            if first is None:
                return
            batch = [first]
            while True:
                try:
                    item = requests.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    requests.put(None)
                    break
                batch.append(item)
            try:
                for _ in batch:
                    store.reserve("vmr", 9, "video.example.com")
                t0 = time.perf_counter()
                store.commit()  # durable before any of them is answered
                commits.append(time.perf_counter() - t0)
            except BaseException as exc:  # let the requesters go, then fail the run
                failed.append(exc)
                stop.set()
                for _, done, _ in batch:
                    done.set()
                raise
            batches.append(len(batch))
            for _, done, _ in batch:
                done.set()

    def requester() -> None:
        mine: list[float] = []
        while not stop.is_set():
            done = threading.Event()
            sent = time.perf_counter()
            requests.put((sent, done, mine))
            done.wait()
            mine.append(time.perf_counter() - sent)
        with lock:
            latencies.extend(mine)

    w = threading.Thread(target=writer)
    w.start()
    threads = [threading.Thread(target=requester) for _ in range(requesters)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    requests.put(None)
    w.join()
    if failed:
        raise SystemExit(f"the writer failed: {failed[0]!r}")
    latencies.sort()
    return latencies, batches, elapsed, commits


def figures(
    latencies: list[float], batches: list[int], elapsed: float, commits: list[float]
) -> dict[str, Any]:
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    return {
        "reservations_per_s": round(len(latencies) / elapsed, 1),
        "p99_ms": round(p99 * 1000, 2),
        "p50_ms": round(statistics.median(latencies) * 1000, 2),
        "mean_batch": round(statistics.mean(batches), 1),
        "reservations": len(latencies),
        # the writer's own time in store.commit() (a batch's durable write, nothing else)
        "commit_p50_ms": round(statistics.median(commits) * 1000, 2),
    }


def run(conferences: int, requesters: int, seconds: float) -> dict[str, float]:
    """The file store."""
    with tempfile.TemporaryDirectory(prefix="vmrsched-bench-") as tmp:
        directory = Path(tmp)
        store = Store(directory, rng=random.Random(1))
        t0 = time.perf_counter()
        fill(store, conferences)
        fill_s = time.perf_counter() - t0
        latencies, batches, elapsed, commits = measure(store, requesters, seconds)
        store.close(compact=False)  # reload must read the snapshot plus the journal

        t0 = time.perf_counter()
        reloaded = Store(directory)
        reload_s = time.perf_counter() - t0
        assert len(reloaded) == conferences + len(latencies), "lost reservations"
        reloaded.close(compact=False)

    got = figures(latencies, batches, elapsed, commits)
    return {
        "reservations_per_s": got["reservations_per_s"],
        "p99_ms": got["p99_ms"],
        "reload_s": round(reload_s, 3),
        "p50_ms": got["p50_ms"],
        "mean_batch": got["mean_batch"],
        "commit_p50_ms": got["commit_p50_ms"],
        "reservations": got["reservations"],
        "conferences": conferences,
        "requesters": requesters,
        "fill_s": round(fill_s, 1),
        "reloaded_records": conferences + len(latencies),
    }


def commit_floor_ms(conn: Any, commits: int = 200) -> float:
    """The median time of the smallest durable commit (one row, one round trip): what the
    WAL flush costs here before any work of the store."""
    conn.execute("CREATE TABLE bench_floor (n integer)")
    times = []
    for n in range(commits):
        t0 = time.perf_counter()
        conn.execute("INSERT INTO bench_floor VALUES (%s)", (n,))  # autocommit
        times.append(time.perf_counter() - t0)
    conn.execute("DROP TABLE bench_floor")
    return round(statistics.median(times) * 1000, 2)


def run_postgresql(
    conferences: int, requesters: int, seconds: float, rounds: int
) -> dict[str, Any]:
    """The shared database, in a throwaway cluster, and the file store in the same run: both
    filled, then `rounds` of the load on each, alternating (this machine is shared: a slow
    minute falls on both); figures over all rounds pooled, and each round's."""
    import psycopg

    from tests import pgcluster
    from vmrsched.postgres import migrations
    from vmrsched.postgres.leases import Leases
    from vmrsched.postgres.records import Records
    from vmrsched.store import DatabaseStore

    if pgcluster.binaries() is None:
        raise SystemExit(pgcluster.missing_reason())
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    loadavg = [round(x, 2) for x in os.getloadavg()]
    runs: dict[str, list[Run]] = {"postgresql": [], "file": []}
    with (
        pgcluster.running() as cluster,
        tempfile.TemporaryDirectory(prefix="vmrsched-bench-") as tmp,
    ):
        dsn = cluster.create_database("bench")
        connect: Callable[[], psycopg.Connection[Any]] = lambda: psycopg.connect(  # noqa: E731
            dsn, autocommit=True
        )
        with connect() as conn:
            migrations.migrate(conn)
            server = conn.execute("SHOW server_version").fetchone()
            durable = {
                name: str(conn.execute(f"SHOW {name}").fetchone()[0])  # type: ignore[index]
                for name in ("fsync", "synchronous_commit", "wal_sync_method")
            }
            floor = [commit_floor_ms(conn)]
        lease = Leases(connect, "bench-instance", 3600).acquire(INTEGRATION)
        assert lease is not None

        def opened(seed: int) -> DatabaseStore:
            records = Records(connect, INTEGRATION)
            records.lease = lease  # fenced, as the service's allocator is
            return DatabaseStore(records, rng=random.Random(seed))

        store = opened(1)
        t0 = time.perf_counter()
        fill(store, conferences)
        fill_s = time.perf_counter() - t0
        store.close()
        log(f"postgresql: {conferences} records filled in {fill_s:.1f} s")
        t0 = time.perf_counter()
        stores: dict[str, StoreWrites] = {"postgresql": opened(2)}
        reload_s = time.perf_counter() - t0
        assert len(stores["postgresql"]) == conferences, "the fill did not land"

        directory = Path(tmp)
        stores["file"] = Store(directory, rng=random.Random(1))
        t0 = time.perf_counter()
        fill(stores["file"], conferences)
        file_fill_s = time.perf_counter() - t0

        for n in range(rounds):
            order = ("postgresql", "file") if n % 2 == 0 else ("file", "postgresql")
            for backend in order:
                runs[backend].append(measure(stores[backend], requesters, seconds))
                got = figures(*runs[backend][-1])
                log(f"round {n + 1}, {backend}: {got}")

        stores["postgresql"].close()
        with connect() as conn:
            row = conn.execute(
                "SELECT count(*) FROM vmrsched_records WHERE integration = %s", (INTEGRATION,)
            ).fetchone()
            floor.append(commit_floor_ms(conn))
        stored = int(row[0]) if row else 0
        assert stored == conferences + sum(len(r[0]) for r in runs["postgresql"]), "lost"
        stores["file"].close(compact=False)  # reload must read the snapshot plus the journal
        t0 = time.perf_counter()
        reloaded = Store(directory)
        file_reload_s = time.perf_counter() - t0
        file_records = len(reloaded)
        assert file_records == conferences + sum(len(r[0]) for r in runs["file"]), "lost"
        reloaded.close(compact=False)

    def pooled(backend: str) -> dict[str, Any]:
        done = runs[backend]
        latencies = sorted(x for r in done for x in r[0])
        got = figures(
            latencies,
            [b for r in done for b in r[1]],
            sum(r[2] for r in done),
            [c for r in done for c in r[3]],
        )
        got["rounds"] = [[figures(*r)["reservations_per_s"], figures(*r)["p99_ms"]] for r in done]
        return got

    pg, file = pooled("postgresql"), pooled("file")
    file.update(
        reload_s=round(file_reload_s, 3),
        fill_s=round(file_fill_s, 1),
        reloaded_records=file_records,
    )
    return {
        "backend": "postgresql",
        "reservations_per_s": pg["reservations_per_s"],
        "p99_ms": pg["p99_ms"],
        "reload_s": round(reload_s, 3),
        "p50_ms": pg["p50_ms"],
        "mean_batch": pg["mean_batch"],
        "commit_p50_ms": pg["commit_p50_ms"],
        "reservations": pg["reservations"],
        "rounds": pg["rounds"],
        "conferences": conferences,
        "requesters": requesters,
        "seconds_per_round": seconds,
        "fill_s": round(fill_s, 1),
        "stored_records": stored,
        "file": file,
        "ratio_per_s": round(pg["reservations_per_s"] / file["reservations_per_s"], 3),
        "ratio_p99": round(pg["p99_ms"] / file["p99_ms"], 2),
        "target": {"per_s": PG_TARGET_PER_S, "p99_ms": PG_TARGET_P99_MS},
        "meets_target": pg["reservations_per_s"] >= PG_TARGET_PER_S
        and pg["p99_ms"] <= PG_TARGET_P99_MS,
        "commit_floor_ms": floor,
        "postgresql": str(server[0]) if server else "",
        "durability": durable,
        "loadavg_at_start": loadavg,
        "cpus": os.cpu_count(),
        "path": "the store driven directly by one group-committing writer thread (not the "
        "allocator actor), both backends; PostgreSQL: one lease-fenced transaction per batch",
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", choices=("file", "postgresql"), default="file")
    parser.add_argument("--conferences", type=int, default=100_000)
    parser.add_argument("--requesters", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument(
        "--rounds", type=int, default=3, help="postgresql: rounds per backend, alternating"
    )
    args = parser.parse_args()
    if args.backend == "postgresql":
        result: dict[str, Any] = run_postgresql(
            args.conferences, args.requesters, args.seconds, args.rounds
        )
    else:
        result = run(args.conferences, args.requesters, args.seconds)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
