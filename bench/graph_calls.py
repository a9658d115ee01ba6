"""Graph requests per processed meeting, and meetings per second, for a burst of 500 meeting
requests put in the room's inbox of the fake Microsoft Graph (tests/fakes) while the service runs
against it over real HTTP (tokens from the fake identity platform over TLS).

Prints one JSON line: {"graph_requests_per_meeting": …, "meetings_per_s": …, …}
Usage: python bench/graph_calls.py [--meetings 500]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import spoolkit
from tests.configs import reserve_alias
from tests.graphkit import ROOM, SECRET, graph_world
from vmrsched import config, service
from vmrsched.rules.meetings import Meeting


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--meetings", type=int, default=500)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="vmrsched-bench-") as tmp,
        graph_world(Path(tmp)) as world,
    ):
        fake = world.fake
        doc = {
            "server": {"data_dir": str(Path(tmp) / "data")},
            "integrations": [world.integration(poll_interval_seconds=0.05)],
        }
        cfg = config.parse(doc, Path(tmp), {"GRAPH_SECRET": SECRET})
        svc = service.start(cfg)
        try:
            spoolkit.wait_for(lambda: svc.ctx.status.state("online") == "running")
            allocator = svc.ctx.registry.get("online", "allocator")
            tokens = [reserve_alias(allocator)["alias_id"] for _ in range(args.meetings)]
            time.sleep(0.3)  # let the poller settle into idle polling
            start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
            before = len(fake.requests)
            with fake.lock:  # all requests arrive at once
                for i, alias_id in enumerate(tokens):
                    fake._deliver(
                        ROOM, _meeting(i, start + timedelta(minutes=15 * i), alias_id), True
                    )
            started = time.perf_counter()
            spoolkit.wait_for(
                lambda: len(fake.responses) >= args.meetings, timeout=600, interval=0.02
            )
            elapsed = time.perf_counter() - started
            during = Counter(method for method, _ in fake.requests[before:])
            accepted = sum(1 for r in fake.responses if r.action == "accept")
        finally:
            svc.stop()
    total = sum(during.values())
    print(
        json.dumps(
            {
                "graph_requests_per_meeting": round(total / args.meetings, 3),
                "meetings_per_s": round(args.meetings / elapsed, 1),
                "meetings": args.meetings,
                "accepted": accepted,
                "requests": total,
                "by_method": dict(during),
                "calls_inside_batches": fake.batched,
                "max_concurrent": fake.max_concurrent,
                "seconds": round(elapsed, 2),
            }
        )
    )


def _meeting(i: int, when: datetime, alias_id: str) -> Meeting:
    return Meeting(
        uid=f"bench-{i}@contoso.example",
        method="REQUEST",
        start=when,
        end=when + timedelta(minutes=30),
        organizer_name="Olga Organizer",
        organizer_email="olga@contoso.example",
        subject=f"Meeting {i}",
        html_body=f"<p>Agenda</p><p>PXPS:-{alias_id}#</p>",
        attendees=("bob@contoso.example",),
    )


if __name__ == "__main__":
    main()
