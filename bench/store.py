"""Durable reservations per second and p99 latency with 64 concurrent requesters, over a store
already holding 100,000 conferences, and the time to reload that store.

One writer thread owns the store (as the AliasAllocator actor does) and group-commits: it takes
every request waiting, reserves each, fsyncs once, then answers them all. A requester's latency
runs from submitting to receiving its durable answer.

Prints one JSON line: {"reservations_per_s": …, "p99_ms": …, "reload_s": …, …}
Usage: python bench/store.py [--conferences 100000] [--requesters 64] [--seconds 2]
"""

from __future__ import annotations

import argparse
import json
import queue
import random
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vmrsched.meetings import Action
from vmrsched.recurrence import Schedule
from vmrsched.store import Store


def fill(store: Store, count: int) -> None:
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


def run(conferences: int, requesters: int, seconds: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="vmrsched-bench-") as tmp:
        directory = Path(tmp)
        store = Store(directory, rng=random.Random(1))
        t0 = time.perf_counter()
        fill(store, conferences)
        fill_s = time.perf_counter() - t0

        requests: queue.Queue[tuple[float, threading.Event, list[float]] | None] = queue.Queue()
        stop = threading.Event()
        latencies: list[float] = []
        lock = threading.Lock()
        batches: list[int] = []

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
                for _ in batch:
                    store.reserve("vmr", 9, "video.example.com")
                store.commit()  # durable before any of them is answered
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
        store.close(compact=False)  # reload must read the snapshot plus the journal

        t0 = time.perf_counter()
        reloaded = Store(directory)
        reload_s = time.perf_counter() - t0
        assert len(reloaded) == conferences + len(latencies), "lost reservations"
        reloaded.close(compact=False)

    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    return {
        "reservations_per_s": round(len(latencies) / elapsed, 1),
        "p99_ms": round(p99 * 1000, 2),
        "reload_s": round(reload_s, 3),
        "p50_ms": round(statistics.median(latencies) * 1000, 2),
        "mean_batch": round(statistics.mean(batches), 1),
        "reservations": len(latencies),
        "conferences": conferences,
        "requesters": requesters,
        "fill_s": round(fill_s, 1),
        "reloaded_records": conferences + len(latencies),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--conferences", type=int, default=100_000)
    parser.add_argument("--requesters", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    print(json.dumps(run(args.conferences, args.requesters, args.seconds)))


if __name__ == "__main__":
    main()
