"""Start 200 integrations (each a supervisor with allocator, poller and notifier actors on the
spool backend) and report how long until all are running, the process RSS and its threads.

Prints one JSON line: {"integrations": 200, "start_s": …, "rss_mb": …, "threads": …}
Usage: python bench/integrations.py [--integrations 200]
"""

from __future__ import annotations

import argparse
import json
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--integrations", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vmrsched-bench-") as tmp:
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
                }
                for i in range(args.integrations)
            ],
        }
        cfg = config.parse(doc, Path(tmp), {})
        rss_before = rss_mb()
        started = time.perf_counter()
        svc = service.start(cfg)
        names = [i.name for i in cfg.integrations]
        while True:
            states = svc.ctx.status.snapshot()
            if all(states.get(n, {}).get("state") == "running" for n in names):
                break
            failed = [n for n in names if states.get(n, {}).get("state") == "failed"]
            if failed:
                raise SystemExit(f"failed to start: {failed[:5]}")
            time.sleep(0.01)
        start_s = time.perf_counter() - started
        time.sleep(1.0)  # let every poller run a few cycles
        result = {
            "integrations": args.integrations,
            "start_s": round(start_s, 2),
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
