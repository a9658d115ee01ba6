"""Logging: text (key=value) or JSON lines, with the decision fields (integration, meeting_uid,
outcome, reason, correlation_id) as first-class keys.

Secrets never reach a log (DESIGN's security rules), at any level: the libraries whose debug
lines carry credentials (exchangelib writes each request's headers, Authorization included; the
OAuth and NTLM libraries their tokens) log at info at most, and every record passes `Redact`,
which blanks what still looks like a credential (an Authorization header's value, a token, a
password or client secret in a form or JSON) wherever it came from."""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime

FIELDS = (
    "integration",
    "meeting_uid",
    "outcome",
    "reason",
    "correlation_id",
    "alarm",
    "detail",
    "item",
    "organizer",
    "alias",
    "message_id",
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in FIELDS:
            value = getattr(record, key, None)
            if value not in (None, ""):
                out[key] = value
        if record.exc_info:
            out["traceback"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


# what may not reach a text log line raw: a meeting's UID, subject or an address comes from
# whoever sent the request, and a line break in it would write a line of their choosing
_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), *range(0x7F, 0xA0)] if c != 0x09} | {
    0x0A: "\\n",
    0x0D: "\\r",
    0x2028: "\\u2028",  # LINE SEPARATOR and PARAGRAPH SEPARATOR: line breaks to many readers
    0x2029: "\\u2029",
}


def one_line(text: object) -> str:
    """`text` with line breaks (U+2028 and NEL included) and other control characters written
    as escapes."""
    return str(text).translate(_CONTROL)


class TextFormatter(logging.Formatter):
    """One line per record (the message and the decision fields escaped); a traceback follows
    on lines of its own, each indented, so no line of it reads as a record."""

    def format(self, record: logging.LogRecord) -> str:
        flat = logging.makeLogRecord(record.__dict__)
        flat.msg, flat.args = one_line(record.getMessage()), None
        head, _, trace = super().format(flat).partition("\n")
        extras = " ".join(
            f"{key}={one_line(getattr(record, key))}"
            for key in FIELDS
            if getattr(record, key, None) not in (None, "")
        )
        line = f"{head} {extras}".rstrip()
        if trace:
            line += "\n" + "\n".join(f"  {part}" for part in trace.split("\n"))
        return line


# libraries that write credentials in their debug lines: capped at info, whatever log_level says
CHATTY = (
    "exchangelib",
    "msal",
    "urllib3",
    "requests_oauthlib",
    "oauthlib",
    "requests_ntlm",
    "spnego",
    "ntlm_auth",
)
_AUTH_HEADER = re.compile(
    r"((?:Proxy-)?Authorization['\"]?\s*[:=]\s*['\"]?)"
    r"(?:(Basic|Bearer|NTLM|Negotiate|Digest)\s+)?[^'\",\s}]+",
    re.IGNORECASE,
)
_SECRET_FIELD = re.compile(
    r"((?:access_token|refresh_token|id_token|client_secret|client_assertion|password|"
    r"passwd|assertion|code_verifier)['\"]?\s*[:=]\s*['\"]?)[^'\"&,\s}]+",
    re.IGNORECASE,
)
REDACTED = "<redacted>"


# a word each pattern's match holds (the regular expressions compare case-insensitively, and
# "ı" is an "i" to them): a line without one of these, nearly every line, is not scanned
# position by position twice
_HINTS = ("authorization", "token", "secret", "assertion", "passw", "code_verifier")


def redact(text: str) -> str:
    """`text` with what looks like a credential replaced by <redacted> (the scheme of an
    Authorization header kept, so a line still says how a request signed in)."""
    folded = text.casefold().replace("ı", "i")
    if not any(hint in folded for hint in _HINTS):
        return text
    text = _AUTH_HEADER.sub(
        lambda m: f"{m.group(1)}{m.group(2) + ' ' if m.group(2) else ''}{REDACTED}", text
    )
    return _SECRET_FIELD.sub(lambda m: f"{m.group(1)}{REDACTED}", text)


class Redact(logging.Filter):
    """Blanks credentials in every record's message before any formatter sees it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a library's bad format string: leave it to logging's own report
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def setup(log_format: str = "text", level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(Redact())
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("pykka").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    for name in CHATTY:
        logging.getLogger(name).setLevel(max(logging.INFO, root.level))
