"""Meetings answered per second for 3,000 queued requests through the running service (actors,
store, durable queue, spool), and in the same run the raw rate of parse + decide + render +
write without actors or store, and their ratio.

This machine's speed drifts by up to a factor of two within a minute, so the two are measured
in alternating rounds (service, raw, service, raw, …) and the ratio reported is the median of
the rounds' ratios; the rates are the totals over all rounds.

Prints one JSON line: {"meetings_per_s": …, "raw_per_s": …, "ratio": …, "ratios": […], …}
Usage: python bench/mailbox.py [--meetings 3000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import select
import statistics
import struct
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import spoolkit
from tests.configs import reserve_alias
from vmrsched import config, service
from vmrsched.mailbox import itip
from vmrsched.mailbox.spool import SpoolMailbox
from vmrsched.messages import answers
from vmrsched.rules.meetings import AliasRecord, MeetingState


def make_config(data_dir: Path) -> config.Config:
    doc = {
        "server": {"listen": "127.0.0.1:0", "data_dir": str(data_dir)},
        "integrations": [
            {
                "name": "bench",
                "exchange": {"mailbox_name": "Video Room", "mailbox_email": "vmr@example.com"},
                "addin": {"token_validation": "none", "server_fqdn": "vc.example.com"},
                "spool": {"poll_interval_seconds": 0.02},
            }
        ],
    }
    return config.parse(doc, data_dir, {})


def requests(alias_ids: list[str]) -> list[bytes]:
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
    return [
        spoolkit.request(
            body=f"<p>Agenda</p><p>PXPS:-{alias_id}#</p>",
            start=start + timedelta(minutes=i),
            subject=f"Meeting {i}",
        )[0]
        for i, alias_id in enumerate(alias_ids)
    ]


def _written(outbox: Path) -> int:
    return sum(1 for name in os.listdir(outbox) if name.endswith(".eml"))


class OutboxWatch:
    """Counts the mails renamed into the outbox as they arrive, by inotify(7): the benchmark
    sleeps in read(2) instead of listing a directory of thousands of files every 50 ms, whose
    listing and strings competed for the GIL with the service it measures. Where inotify is
    missing, a listing every 0.2 s."""

    _IN_MOVED_TO = 0x80
    _IN_Q_OVERFLOW = 0x4000
    _HEADER = struct.Struct("iIII")

    def __init__(self, outbox: Path) -> None:
        self.outbox = outbox
        self.fd = -1
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if hasattr(libc, "inotify_init1"):
            fd = libc.inotify_init1(os.O_CLOEXEC)
            if fd >= 0 and libc.inotify_add_watch(fd, bytes(outbox), self._IN_MOVED_TO) >= 0:
                self.fd = fd
            elif fd >= 0:
                os.close(fd)
        self.before = _written(outbox)  # any written before the watch began

    def wait(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        if self.fd < 0:
            spoolkit.wait_for(lambda: _written(self.outbox) >= count, timeout, interval=0.2)
            return
        seen = self.before
        while seen < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{seen} of {count} replies in {timeout} s")
            if not select.select([self.fd], [], [], min(left, 1.0))[0]:
                continue  # every rename is an event (an overflow is counted below)
            data = os.read(self.fd, 1 << 16)
            offset = 0
            while offset < len(data):
                _, mask, _, length = self._HEADER.unpack_from(data, offset)
                start = offset + self._HEADER.size
                name = data[start : start + length].rstrip(b"\0")
                offset = start + length
                if mask & self._IN_Q_OVERFLOW:
                    seen = _written(self.outbox)
                elif name.endswith(b".eml") and not name.startswith(b"."):
                    seen += 1

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def measure_service(count: int, root: Path) -> tuple[float, float, int]:
    """(seconds, CPU seconds of all threads, replies that accept)"""
    cfg = make_config(root / "svc")
    svc = service.start(cfg)
    try:
        spoolkit.wait_for(
            lambda: svc.ctx.status.snapshot().get("bench", {}).get("state") == "running"
        )
        allocator = svc.ctx.registry.get("bench", "allocator")
        alias_ids = [reserve_alias(allocator)["alias_id"] for _ in range(count)]
        data = requests(alias_ids)
        spool = cfg.integrations[0].spool_dir(cfg.data_dir)
        staging = spool / "staging"
        staging.mkdir()
        for i, item in enumerate(data):
            (staging / f"req-{i:05d}.ics").write_bytes(item)
        outbox = spool / "outbox"
        watch = OutboxWatch(outbox)
        try:
            started = time.perf_counter()
            cpu = time.process_time()
            for path in sorted(staging.iterdir()):  # queue them all at once (rename in)
                path.rename(spool / "inbox" / path.name)
            watch.wait(count, timeout=600)
            elapsed = time.perf_counter() - started
            cpu = time.process_time() - cpu
        finally:
            watch.close()
        assert _written(outbox) >= count
        accepted = sum(
            1 for p in outbox.glob("*.eml") if b"X-Vmrsched-Outcome: accepted" in p.read_bytes()
        )
        return elapsed, cpu, accepted
    finally:
        svc.stop()


def measure_raw(count: int, root: Path) -> tuple[float, float]:
    """The same work without actors or store: parse, decide against an in-memory record and
    render (answers.plan, as the allocator does), and write the reply through the same spool
    send."""
    cfg = make_config(root / "raw")
    integ = cfg.integrations[0]
    renderer = integ.renderer()
    gateway = SpoolMailbox(integ.spool_dir(cfg.data_dir), integ.name)
    alias_ids = [f"00000000-0000-4000-8000-{i:012d}" for i in range(count)]
    data = requests(alias_ids)
    now = datetime.now(UTC)
    started = time.perf_counter()
    cpu = time.process_time()
    for item, alias_id in zip(data, alias_ids, strict=True):
        meeting = itip.parse_calendar(item, correlation_id="c").meetings[0]
        record = AliasRecord(alias_id, "vmr1@vc.example.com", "vmr1", "reserved")
        step = answers.plan(integ, renderer, meeting, MeetingState(token_record=record), now)
        assert step.decision.outcome == "accepted" and len(step.messages) == 1
        gateway.send(step.messages[0])
    return time.perf_counter() - started, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--meetings", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    service_s = raw_s = service_cpu = raw_cpu = 0.0
    accepted = 0
    ratios: list[float] = []
    for round_ in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="vmrsched-bench-") as tmp:
            root = Path(tmp) / str(round_)
            elapsed, cpu, took = measure_service(args.meetings, root)
            raw, cpu_raw = measure_raw(args.meetings, root)
        service_s += elapsed
        raw_s += raw
        service_cpu += cpu
        raw_cpu += cpu_raw
        accepted += took
        ratios.append(round(raw / elapsed, 3))
    total = args.meetings * args.rounds
    print(
        json.dumps(
            {
                "meetings_per_s": round(total / service_s, 1),
                "raw_per_s": round(total / raw_s, 1),
                "ratio": round(statistics.median(ratios), 3),
                "ratio_overall": round(raw_s / service_s, 3),
                "ratios": ratios,
                "meetings": total,
                "accepted": accepted,
                "service_s": round(service_s, 2),
                "raw_s": round(raw_s, 2),
                "service_cpu_s": round(service_cpu, 2),
                "raw_cpu_s": round(raw_cpu, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
