"""Start 200 integrations (each a supervisor with allocator, poller and notifier actors on the
spool backend) and report how long until all are running, the process RSS and its threads.

`--decisions N` starts them as after a long life instead: each integration's decisions log
already holds N entries (a full one holds 40,000). The logs are hard links to one file, so the
benchmark needs the disk for one log, not for one per integration; reading any of them would
go through the page cache all the same.

`--restart` measures a restart: the integrations are started and stopped once first, so their
directories exist, as on every start of a service but the first (a fresh start also makes six
directories per integration; on ext4 without a journal, as on the benchmark machine's /tmp,
each new inode skips every inode deleted in the last minute, which the previous run's clean-up
leaves by the thousand: compare with TMPDIR on tmpfs or a journaled file system).

Prints one JSON line: {"integrations": 200, "parse_s": …, "start_s": …, "start_cpu_s": …,
"rss_mb": …, "threads": …}; parse_s is the config's parse and checks (the templates' dry runs
included), before the start; start_cpu_s is the process's CPU time (all threads) until all are
running, steadier than start_s on a noisy machine; idle_cpu is the CPU-seconds per second the
running integrations then use with nothing to do (two seconds of it).
Usage: python bench/integrations.py [--integrations 200] [--decisions 0] [--restart]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vmrsched import config, service


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def prefill_decisions(data_dir: Path, integrations: int, entries: int) -> None:
    folder = data_dir / "decisions"
    folder.mkdir(parents=True)
    one = folder / "one.jsonl"
    entry = {
        "time": "2026-11-30T12:00:00+00:00",
        "subject": "Weekly planning of the video team",
        "organizer": "alice@example.com",
        "outcome": "accepted",
        "reason": "new_meeting",
        "correlation_id": "8d1c0c4e-5a0b-4a9e-9e3c-1f2d3e4f5a6b",
        "alias": "vmr1234567@video.example.com",
        "meeting_uid": "040000008200E00074C5B7101A82E00800000000",
        "item": "req-00001.ics",
        "detail": "",
    }
    one.write_bytes((json.dumps(entry) + "\n").encode() * entries)
    for i in range(integrations):
        os.link(one, folder / f"customer-{i:03d}.jsonl")


def start_and_wait(cfg: config.Config) -> service.Service:
    svc = service.start(cfg)
    # only the ones not running yet are looked at: copying the whole status board 100 times a
    # second held the lock every starting integration takes to report
    waiting = [i.name for i in cfg.integrations]
    while waiting:
        states = [(n, svc.ctx.status.state(n)) for n in waiting]
        failed = [n for n, state in states if state == "failed"]
        if failed:
            raise SystemExit(f"failed to start: {failed[:5]}")
        waiting = [n for n, state in states if state != "running"]
        if waiting:
            time.sleep(0.01)
    return svc


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--integrations", type=int, default=200)
    parser.add_argument("--decisions", type=int, default=0)
    parser.add_argument("--restart", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vmrsched-bench-") as tmp:
        if args.decisions:
            prefill_decisions(Path(tmp) / "data", args.integrations, args.decisions)
        doc = {
            "server": {"listen": "127.0.0.1:0", "data_dir": str(Path(tmp) / "data")},
            "integrations": [
                {
                    "name": f"customer-{i:03d}",
                    "exchange": {
                        "mailbox_name": f"Room {i}",
                        "mailbox_email": f"vmr{i}@example.com",
                    },
                    "addin": {"token_validation": "none"},
                    # aliases are unique across the service: each its own range
                    "single_use": {"alias_prefix": f"c{i:04d}"},
                }
                for i in range(args.integrations)
            ],
        }
        parsing = time.perf_counter()
        cfg = config.parse(doc, Path(tmp), {})  # every check, the templates' dry runs included
        parse_s = time.perf_counter() - parsing
        if args.restart:
            start_and_wait(cfg).stop()
        rss_before = rss_mb()
        cpu_before = time.process_time()
        started = time.perf_counter()
        svc = start_and_wait(cfg)
        start_s = time.perf_counter() - started
        start_cpu_s = time.process_time() - cpu_before
        time.sleep(1.0)  # let every poller run a few cycles
        idle_cpu, idle_wall = time.process_time(), time.perf_counter()
        time.sleep(2.0)
        idle = (time.process_time() - idle_cpu) / (time.perf_counter() - idle_wall)
        result = {
            "integrations": args.integrations,
            "decisions": args.decisions,
            "restart": args.restart,
            "parse_s": round(parse_s, 2),
            "start_s": round(start_s, 2),
            "start_cpu_s": round(start_cpu_s, 2),
            "idle_cpu": round(idle, 3),
            "rss_mb": round(rss_mb(), 1),
            "threads": threading.active_count(),
            "rss_before_mb": round(rss_before, 1),
        }
        stop_started = time.perf_counter()
        svc.stop()
        result["stop_s"] = round(time.perf_counter() - stop_started, 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
