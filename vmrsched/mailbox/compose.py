"""RFC 5322 mails of outgoing messages, for backends that deliver files or raw MIME (the spool)."""

from __future__ import annotations

from datetime import UTC, datetime
from email import quoprimime
from email.header import Header
from email.utils import format_datetime, formataddr

from vmrsched.htmltext import text_of
from vmrsched.mailbox.icalvalues import shortened
from vmrsched.messages.calendars import MAX_HEADER, clean_header
from vmrsched.outgoing import Outgoing
from vmrsched.rules.meetings import is_address

LINE_LIMIT = 998  # RFC 5322: octets a line MUST NOT exceed
FOLD_AT = 78  # RFC 5322: ... and SHOULD NOT exceed
_WORD_OVERHEAD = len("=?utf-8?q??=")
_WORD_MAX = 75  # RFC 2047: characters of one encoded word
UID_HEADER = "X-Vmrsched-Meeting-Uid"  # the whole meeting UID (whole_header)


def _header(value: str) -> str:
    """Non-ASCII header values as RFC 2047 encoded words (folded with CRLF, as every line of
    the mail ends)."""
    value = clean_header(value)
    return value if value.isascii() else Header(value, "utf-8").encode(linesep="\r\n")


def whole_header(name: str, value: str) -> str:
    """The value of header `name` carrying every character of `value`, whatever its length
    (the meeting UID: up to 1,000 characters, one line's limit is no reason to cut it).
    Written as it is when it is printable ASCII that fits one line and that no parser would
    change (no leading or trailing blank, nothing that reads as an encoded word); else as RFC
    2047 encoded words (UTF-8, Q: ASCII stays readable), one to a folded line of at most 78
    characters. A MIME parser joins adjacent encoded words without the folding between them
    (RFC 2047 section 6.2), so it reads back exactly `value`: control characters too."""
    if (
        all(" " <= ch <= "~" for ch in value)
        and value == value.strip()
        and "=?" not in value
        and len(name) + 2 + len(value) <= LINE_LIMIT
    ):
        return value
    words: list[str] = []
    chunk: list[bytes] = []
    size = 0
    room = FOLD_AT - len(name) - 2 - _WORD_OVERHEAD  # the first word shares the name's line
    for ch in value:
        octets = ch.encode("utf-8")
        width = quoprimime.header_length(octets)
        if chunk and size + width > room:
            words.append(quoprimime.header_encode(b"".join(chunk), "utf-8"))
            chunk, size = [], 0
            room = min(_WORD_MAX, FOLD_AT - 1) - _WORD_OVERHEAD
        chunk.append(octets)
        size += width
    if chunk:
        words.append(quoprimime.header_encode(b"".join(chunk), "utf-8"))
    return "\r\n ".join(words)


def _subject(value: str) -> str:
    """A Subject that fits one header line: a long one (a SUMMARY of up to 1,000 characters,
    "Declined: " before it) is cut at a word break and marked with an ellipsis, rather than
    mid-word where clean_header would cut any header."""
    return _header(shortened(value.strip(), MAX_HEADER))


def _address(name: str, address: str) -> str:
    """A From value; an internationalised address (RFC 6532), which formataddr refuses, is
    written as one encoded header rather than failing the message."""
    try:
        return formataddr((name, address), charset="utf-8")
    except UnicodeError:
        return _header(f"{name} <{address}>" if name else address)


def _part(text: str, subtype: str, boundary: str, params: str = "") -> str:
    """One text part: 7bit when it is plain ASCII with short lines (and cannot be mistaken for
    the boundary), else quoted-printable (readable with `cat`, unlike base64)."""
    lines = text.splitlines()
    plain = text.isascii() and all(len(line) <= 900 for line in lines) and boundary not in text
    if plain:
        charset, encoding = "us-ascii", "7bit"
        body = "\r\n".join(lines)
    else:
        charset, encoding = "utf-8", "quoted-printable"
        octets = text.replace("\r\n", "\n").encode("utf-8").decode("latin-1")  # bytes as chars
        body = quoprimime.body_encode(octets, maxlinelen=76, eol="\r\n")
    return (
        f'Content-Type: text/{subtype}; charset="{charset}"{params}\r\n'
        f"Content-Transfer-Encoding: {encoding}\r\n\r\n{body}\r\n"
    )


def to_eml(message: Outgoing) -> bytes:
    """An RFC 5322 mail: multipart/alternative with a text/plain alternative, the HTML body and
    the text/calendar part. Written directly (a fixed shape on the hot path of every answer:
    the email package's generator refolds every header of every part, most of the cost).
    Each recipient is one address: a list in one of them ("a@x, b@x") would send the message
    to everyone on it, so it is refused (ValueError) instead."""
    for recipient in message.recipients:
        if recipient and not is_address(clean_header(recipient)):
            raise ValueError(f"recipient {recipient[:200]!r} is not one address")
    boundary = f"=_vmrsched_{message.id}"  # "=_" never occurs in quoted-printable text
    headers = [
        ("From", _address(clean_header(message.sender_name), clean_header(message.sender))),
        ("To", ", ".join(_address("", clean_header(r)) for r in message.recipients)),
        ("Subject", _subject(message.subject)),
        ("Date", format_datetime(datetime.now(UTC))),
        ("Message-ID", f"<{message.id}@vmrsched.invalid>"),
        ("MIME-Version", "1.0"),
        ("Content-Type", f'multipart/alternative; boundary="{boundary}"'),
        ("X-Vmrsched-Outcome", clean_header(message.outcome)),
        ("X-Vmrsched-Reason", clean_header(message.reason)),
        ("X-Vmrsched-Correlation-Id", clean_header(message.correlation_id)),
        (UID_HEADER, whole_header(UID_HEADER, message.meeting_uid)),
    ]
    out = [f"{name}: {value}\r\n" for name, value in headers]
    out.append("\r\n")
    parts = [
        _part(text_of(message.html_body), "plain", boundary),
        _part(message.html_body, "html", boundary),
    ]
    if message.calendar:
        method = "REQUEST" if message.kind == "update" else "REPLY"
        parts.append(_part(message.calendar, "calendar", boundary, f"; method={method}"))
    for part in parts:
        out.append(f"--{boundary}\r\n{part}")
    out.append(f"--{boundary}--\r\n")
    return "".join(out).encode("ascii")
