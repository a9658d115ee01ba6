"""The log as an admin reads it: one line per record, whatever a meeting request carries."""

from __future__ import annotations

import base64
import json
import logging
import sys
from pathlib import Path
from typing import Any

from vmrsched import logs
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


def test_no_secret_reaches_the_log_at_debug(tmp_path: Path, capsys: Any) -> None:
    """log_level = "debug" with Basic authentication against EWS (the fake, over real HTTP):
    exchangelib's debug lines would carry each request's Authorization header; neither the
    password nor its Base64 reaches the log, and a token a library writes is blanked too."""
    from tests.configs import PW, ews_config
    from tests.fakes.ews_server import FakeExchange
    from tests.fakes.threaded import ThreadedServer
    from vmrsched.mailbox.backends import make_gateway
    from vmrsched.telemetry import Metrics

    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    levels = {name: logging.getLogger(name).level for name in logs.CHATTY}
    password = PW["VMRSCHED_EWS_PASSWORD"]
    fake = FakeExchange()
    server = ThreadedServer(fake.app()).start()
    try:
        logs.setup("text", "debug")
        cfg = ews_config(tmp_path, server.url)
        gateway = make_gateway(cfg.integrations[0], cfg.data_dir, Metrics())
        gateway.fetch(10)
        gateway.close()
        logging.getLogger("requests_oauthlib").warning(
            "token answer {'access_token': 'eyJhbGciOi.x.y', 'refresh_token': 'r-123'}"
        )
        logging.getLogger("vmrsched.test").debug("sent Authorization: Bearer eyJ0eXAi.a.b")
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        server.stop()
    err = capsys.readouterr().err
    assert "vmrsched" in err and "DEBUG" in err  # debug logging was on
    user = cfg.integrations[0].exchange.service_account_username
    basic = base64.b64encode(f"{user}:{password}".encode()).decode()
    assert password not in err and basic not in err
    assert "eyJ" not in err and "r-123" not in err
    assert "Bearer <redacted>" in err


def test_a_credential_is_blanked_however_its_name_is_written() -> None:
    """Lines are looked at closely only when they name a credential; that look-out folds case
    as the patterns do (an "ı" or "ſ" is an "i" or "s" to them), so no spelling slips past it,
    and a line naming none comes back as it was."""
    for line, secret in [
        ("AUTHORIZATION: Bearer abc.def", "abc.def"),
        ("authorızation: Basic dXNlcjpwdw==", "dXNlcjpwdw=="),
        ("{'Access_Token': 'eyJ0.x'}", "eyJ0.x"),
        ("paſſword=hunter2", "hunter2"),
        ("CLIENT_SECRET=s3cret&grant_type=x", "s3cret"),
        ("code_Verifier=v3rifier", "v3rifier"),
        ("client_assertion: 'jwt.jwt.jwt'", "jwt.jwt.jwt"),
    ]:
        assert secret not in logs.redact(line), line
        assert logs.REDACTED in logs.redact(line), line
    plain = "reserved 2 aliases: vmr123@video.example.com for ann@example.com, vmr124 for bo"
    assert logs.redact(plain) is plain
