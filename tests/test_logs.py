"""The log as an admin reads it: one line per record, whatever a meeting request carries."""

from __future__ import annotations

import json
import logging
import sys

from vmrsched.logs import JsonFormatter, TextFormatter

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FORGED = "uid-1\n2026-12-06 21:00:00,000 CRITICAL vmrsched.admin: forged\r\x1b[2J"
UNICODE_BREAKS = "uid-2\u2028forged\x85forged\u2029forged"


def record(message: str, *args: object, **fields: object) -> logging.LogRecord:
    made = logging.LogRecord("vmrsched.poller", logging.INFO, __file__, 1, message, args, None)
    made.__dict__.update(fields)
    return made


def test_a_line_break_in_what_a_sender_wrote_cannot_start_a_line_of_its_own() -> None:
    """A UID is whatever the meeting request says: with its line breaks written raw, one
    request could add a line of its choosing to the log (docs/production.md: one line per
    decision)."""
    text = TextFormatter(FORMAT).format(record("handled %s", FORGED, meeting_uid=FORGED))
    assert "\n" not in text and "\r" not in text and "\x1b" not in text
    assert text.count("uid-1\\n2026-12-06 21:00:00,000 CRITICAL") == 2  # message, field
    assert text.endswith(
        "meeting_uid=uid-1\\n2026-12-06 21:00:00,000 CRITICAL vmrsched.admin: forged\\r\\x1b[2J"
    )


def test_unicode_line_breaks_are_escaped_too() -> None:
    """U+2028, U+2029 and NEL end a line for many log readers (and str.splitlines)."""
    text = TextFormatter(FORMAT).format(record("handled %s", UNICODE_BREAKS))
    assert len(text.splitlines()) == 1
    assert "uid-2\\u2028forged\\x85forged\\u2029forged" in text


def test_a_traceback_follows_indented_so_no_line_of_it_reads_as_a_record() -> None:
    try:
        raise ValueError(f"bad {FORGED}")
    except ValueError:
        made = logging.LogRecord(
            "vmrsched.x", logging.ERROR, __file__, 1, "boom", (), sys.exc_info()
        )
    first, *rest = TextFormatter(FORMAT).format(made).split("\n")
    assert first.endswith("ERROR vmrsched.x: boom") and rest
    assert all(line.startswith("  ") for line in rest)


def test_json_lines_hold_it_as_data() -> None:
    line = JsonFormatter().format(record("handled %s", FORGED, meeting_uid=FORGED))
    assert "\n" not in line and json.loads(line)["meeting_uid"] == FORGED
