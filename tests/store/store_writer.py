"""Child process for the crash test: reserves and binds aliases in groups, committing each group,
and prints the ids of every acknowledged (committed) write. The parent SIGKILLs it at random."""

from __future__ import annotations

import random
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from vmrsched.rules.meetings import Action
from vmrsched.rules.recurrence import Schedule
from vmrsched.store import Store


def main() -> None:
    directory, seed = Path(sys.argv[1]), int(sys.argv[2])
    rng = random.Random(seed)
    store = Store(directory, rng=rng, compact_after=300)
    start = datetime(2030, 1, 1, tzinfo=UTC)
    while True:
        group = []
        for _ in range(rng.randint(1, 20)):
            rec = store.reserve("v", 8, "d.example")
            if rng.random() < 0.5:
                rec = (
                    store.apply(
                        Action(
                            "bind",
                            alias_id=rec["alias_id"],
                            meeting_uid=f"uid-{rec['alias_id']}",
                            schedule=Schedule(start, start + timedelta(hours=1)),
                        ),
                        {"name": "Meeting"},
                    )
                    or rec
                )
            group.append(f"{rec['alias_id']} {rec['status']}")
        store.commit()
        sys.stdout.write("".join(f"{line}\n" for line in group))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
