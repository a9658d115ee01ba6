"""HTML as the words it shows, written once: an answer's text reads the same in the text/plain
part of a mail (spool, EWS), in Graph's response comment and in the iCalendar description, and
a token hidden by a mail client's re-wrapping is found in what a reader sees.

`text_of` keeps the layout a reader sees (block ends become line breaks, runs of blank lines one
blank line, a link shows its address in brackets where its text is not the address); `visible`
only drops tags and invisible characters, so that a token split by inline tags
(`PXPS:-<span>…</span>#`) reads whole."""

from __future__ import annotations

import html
import re

_BREAKS = re.compile(r"<br\s*/?>|</(?:p|div|li|tr|h[1-6]|table|ul|ol)\s*>", re.IGNORECASE)
_LINK = re.compile(r'<a\s[^>]*href="([^"]*)"[^>]*>(.*?)</a\s*>', re.IGNORECASE | re.DOTALL)
_TAGS = re.compile(r"<[^>]*>")
# zero-width characters and soft hyphens: mail clients insert them, readers never see them
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"), None)


def visible(body: str) -> str:
    """The characters a reader sees: tags dropped, entities decoded, invisible characters gone
    (no line breaks added)."""
    return html.unescape(_TAGS.sub("", body)).translate(_INVISIBLE)


def text_of(body: str) -> str:
    """The text a reader of the HTML `body` sees, laid out in lines, ending in one newline."""

    def link(match: re.Match[str]) -> str:
        href, label = html.unescape(match.group(1)), _TAGS.sub("", match.group(2)).strip()
        # the label is the address itself (with a scheme or not): it says it all
        if not href or label in (href, href.partition(":")[2]):
            return label
        return f"{label} ({href})"

    text = _LINK.sub(link, body)
    text = _BREAKS.sub("\n", text)
    text = visible(text)
    lines = [" ".join(line.split()) for line in text.splitlines()]
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).strip() + "\n"
