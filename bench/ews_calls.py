"""EWS requests per processed meeting, and meetings per second, for 500 meeting requests put in
the equipment mailbox of the fake Exchange (tests/fakes) while the service runs against it
over real HTTP.

Prints one JSON line: {"ews_requests_per_meeting": …, "meetings_per_s": …, …}
Usage: python bench/ews_calls.py [--meetings 500]
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
from tests.configs import ROOM, ews_config, reserve_alias
from tests.fakes.ews_server import FakeExchange
from tests.fakes.threaded import ThreadedServer
from vmrsched import service
from vmrsched.rules.meetings import Meeting


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--meetings", type=int, default=500)
    args = parser.parse_args()
    fake = FakeExchange()
    server = ThreadedServer(fake.app()).start()
    with tempfile.TemporaryDirectory(prefix="vmrsched-bench-") as tmp:
        cfg = ews_config(Path(tmp), server.url)
        svc = service.start(cfg)
        try:
            spoolkit.wait_for(lambda: svc.ctx.status.state("onprem") == "running")
            allocator = svc.ctx.registry.get("onprem", "allocator")
            tokens = [reserve_alias(allocator)["alias_id"] for _ in range(args.meetings)]
            time.sleep(0.3)  # let the poller settle into idle polling
            start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
            before = len(fake.requests)
            idle_started = time.perf_counter()
            with fake.lock:  # all requests arrive at once
                for i, alias_id in enumerate(tokens):
                    when = start + timedelta(minutes=15 * i)
                    item = _request(fake, i, when, alias_id)
                    fake.mailbox(ROOM).inbox[item.id] = item
                    fake.mailbox(ROOM).events.append(item.id)
            started = time.perf_counter()
            spoolkit.wait_for(
                lambda: len(fake.replies(ROOM)) >= args.meetings, timeout=600, interval=0.02
            )
            elapsed = time.perf_counter() - started
            during = Counter(fake.requests[before:])
            accepted = sum(1 for r in fake.replies(ROOM) if r.response == "Accept")
        finally:
            svc.stop()
            server.stop()
    total = sum(during.values())
    print(
        json.dumps(
            {
                "ews_requests_per_meeting": round(total / args.meetings, 3),
                "meetings_per_s": round(args.meetings / elapsed, 1),
                "meetings": args.meetings,
                "accepted": accepted,
                "requests": dict(sorted(during.items())),
                "seconds": round(elapsed, 2),
                "setup_s": round(started - idle_started, 2),
            }
        )
    )


def _request(fake: FakeExchange, i: int, when: datetime, alias_id: str):  # type: ignore[no-untyped-def]
    from tests.fakes.ews_server import FakeItem

    meeting = Meeting(
        uid=f"bench-{i}",
        method="REQUEST",
        start=when,
        end=when + timedelta(minutes=30),
        organizer_name="Olga",
        organizer_email="olga@example.com",
        subject=f"Meeting {i}",
        html_body=f"<p>PXPS:-{alias_id}#</p>",
        attendees=("bob@example.com",),
    )
    return FakeItem(
        fake.new_id("in"),
        "MeetingRequest",
        meeting,
        meeting.subject,
        meeting.html_body,
        meeting.organizer_email,
    )


if __name__ == "__main__":
    main()
