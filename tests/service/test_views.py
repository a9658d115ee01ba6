"""What the admin API and the console show of a stored alias."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from vmrsched import config
from vmrsched.rules.recurrence import Schedule
from vmrsched.service.views import admin_view
from vmrsched.store.records import encode_schedule

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def test_the_join_windows_are_the_next_ones_in_time_order_moved_occurrences_included() -> None:
    """An occurrence moved later in the series is listed where it now falls, and one moved
    far ahead does not push a nearer one out of the five shown."""
    integ = config.parse(
        {
            "server": {"listen": "127.0.0.1:8080"},
            "integrations": [
                {
                    "name": "hq",
                    "exchange": {"mailbox_name": "VMR", "mailbox_email": "vmr@example.com"},
                    "addin": {"token_validation": "none"},
                }
            ],
        },
        Path("."),
        {},
    ).integrations[0]
    first = NOW + timedelta(days=1)
    series = Schedule(first, first + timedelta(hours=1), rrule="FREQ=DAILY;COUNT=10")
    moved = first + timedelta(days=1)
    far = first + timedelta(days=2)
    schedule = series.with_override(
        moved, moved + timedelta(hours=3), moved + timedelta(hours=4)
    ).with_override(far, far + timedelta(days=30), far + timedelta(days=30, hours=1))
    record = {
        "alias": "81123456@video.example.com",
        "numeric_alias": "81123456",
        "alias_id": "1b4e28ba-2fa1-41d2-883f-0016d3cca427",
        "status": "bound",
        "schedule": encode_schedule(schedule),
    }
    view = admin_view(integ, record, NOW, integ.renderer())  # type: ignore[arg-type]
    starts = [datetime.fromisoformat(w["start"]) for w in view["windows"]]
    assert starts == sorted(starts) and len(starts) == 5
    assert starts[:2] == [first, moved + timedelta(hours=3)]
    assert far + timedelta(days=30) not in starts  # a month away: later than five others
