"""Alias, numeric alias and alias-ID generation, and finding alias-ID tokens in meeting bodies.

Aliases are dialled by strangers, so their digits come from the operating system's CSPRNG;
tests inject a seeded source instead so that runs are repeatable.
"""

from __future__ import annotations

import os
import random
import re
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NoReturn, Protocol

from vmrsched import htmltext

ALIAS_ID_PREFIX = "PXPS:-"
PLACEHOLDER_PREFIX = "TOK:-"
TOKEN_SUFFIX = "#"

TokenKind = Literal["PXPS", "TOK"]

# A token is the prefix, a UUID (case-insensitive, hyphens optional) and '#'. Whitespace or markup
# that mail clients insert inside the token is removed before matching (see `find_token`).
_TOKEN_RE = re.compile(
    r"(PXPS|TOK):-([0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12})#"
)


class RandomSource(Protocol):
    """What generation needs from a random source; `secrets.SystemRandom()` and
    `random.Random(seed)` both fit."""

    def randrange(self, start: int, stop: int = ..., step: int = ...) -> int: ...

    def getrandbits(self, k: int, /) -> int: ...


class PooledSystemRandom(random.Random):
    """The operating system's CSPRNG (os.urandom, as `secrets` reads it), fetched POOL_BYTES
    at a time. `secrets.SystemRandom` makes a system call per draw and an alias takes two
    (its digits and its UUID): a third of the allocator's work per reservation. Every byte is
    handed out once, to one draw, whichever thread asks; a forked child starts from a fresh
    pool so that it never repeats its parent's draws. Like SystemRandom it has no state to
    seed, save or restore."""

    POOL_BYTES = 4096

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0
        self._lock = threading.Lock()
        super().__init__()
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._pool, self._at, self._lock = b"", 0, threading.Lock()

    def _bytes(self, count: int) -> bytes:
        with self._lock:
            start = self._at
            if start + count > len(self._pool):
                self._pool, start = os.urandom(max(self.POOL_BYTES, count)), 0
            self._at = start + count
            return self._pool[start : self._at]

    def getrandbits(self, k: int, /) -> int:
        if k < 0:
            raise ValueError("number of bits must be non-negative")
        count = (k + 7) // 8
        return int.from_bytes(self._bytes(count), "big") >> (count * 8 - k)

    def random(self) -> float:
        return (int.from_bytes(self._bytes(7), "big") >> 3) * 2.0**-53

    def seed(self, *args: object, **kwargs: object) -> None:
        """No state: the operating system's generator is not seeded from here."""

    def _stateless(self, *args: Any, **kwargs: Any) -> NoReturn:
        """getstate and setstate, refused for good, as random.SystemRandom refuses them (with
        the same exception, NotImplementedError): the bytes come from the operating system,
        so there is no state here to save, and restoring one must not seem to repeat draws."""
        raise NotImplementedError("the operating system's CSPRNG has no state to save or restore")

    getstate = setstate = _stateless


_SYSTEM_RANDOM: RandomSource = PooledSystemRandom()


class AliasExhaustedError(RuntimeError):
    """No free alias was found within the retry budget: the digit space is (nearly) full."""


@dataclass(frozen=True, slots=True)
class Alias:
    alias: str
    numeric_alias: str
    alias_id: str  # the bare UUID; the token form is `alias_id_token(alias_id)`


@dataclass(frozen=True, slots=True)
class Token:
    kind: TokenKind
    id: str  # canonical lower-case hyphenated UUID

    @property
    def text(self) -> str:
        prefix = ALIAS_ID_PREFIX if self.kind == "PXPS" else PLACEHOLDER_PREFIX
        return f"{prefix}{self.id}{TOKEN_SUFFIX}"


_UUID_CLEAR = ~((0xC000 << 48) | (0xF000 << 64))
_UUID_SET = (0x8000 << 48) | (4 << 76)  # the RFC 4122 variant; version 4


def new_uuid(rng: RandomSource | None = None) -> str:
    """A version-4 UUID drawn from `rng` (the system CSPRNG by default), in its canonical text
    (what str(uuid.UUID(int=…, version=4)) gives, without building the object)."""
    source = rng or _SYSTEM_RANDOM
    text = "%032x" % (source.getrandbits(128) & _UUID_CLEAR | _UUID_SET)
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def alias_id_token(alias_id: str) -> str:
    return f"{ALIAS_ID_PREFIX}{alias_id}{TOKEN_SUFFIX}"


def placeholder_token(rng: RandomSource | None = None) -> str:
    return f"{PLACEHOLDER_PREFIX}{new_uuid(rng)}{TOKEN_SUFFIX}"


def random_digits(length: int, rng: RandomSource | None = None) -> str:
    source = rng or _SYSTEM_RANDOM
    return str(source.randrange(0, 10**length)).zfill(length)


def generate_alias(
    prefix: str,
    suffix_length: int,
    domain: str,
    is_taken: Callable[[str], bool],
    rng: RandomSource | None = None,
    attempts: int = 64,
) -> Alias:
    """Draw aliases until `is_taken(numeric_alias)` says no; the numeric alias is the identity
    because both the alias (prefix+digits@domain) and the numeric alias (prefix+digits) must be
    unique and the former is derived from the latter."""
    if not 1 <= len(prefix) <= 8:
        raise ValueError("alias prefix must be 1-8 characters")
    if not 6 <= suffix_length <= 15:
        raise ValueError("alias suffix length must be 6-15")
    for _ in range(attempts):
        numeric = prefix + random_digits(suffix_length, rng)
        if not is_taken(numeric):
            alias = f"{numeric}@{domain}" if domain else numeric
            return Alias(alias=alias, numeric_alias=numeric, alias_id=new_uuid(rng))
    raise AliasExhaustedError(f"no free alias after {attempts} attempts with prefix {prefix!r}")


_DIGITS = "0123456789"


@dataclass(frozen=True, slots=True)
class AliasSpace:
    """Every alias one integration can hand out: numeric aliases `prefix` + `digits` digits, and
    aliases `<numeric alias>@domain`."""

    prefix: str
    digits: int
    domain: str

    @property
    def size(self) -> int:
        """How many numeric aliases (and so aliases) the space holds."""
        return int(10**self.digits)

    def _bucket(self) -> tuple[int, str]:
        """Spaces that can meet share this: the numeric alias's length, and the prefix without
        its trailing digits (case-folded). Whatever follows that part is digits in both."""
        folded = self.prefix.casefold()
        return len(folded) + self.digits, folded.rstrip(_DIGITS)


def shared_alias(a: AliasSpace, b: AliasSpace) -> str | None:
    """A numeric alias both spaces can produce, or None when they never meet.

    Dialled aliases are compared case-folded, and a node may dial `<numeric alias>@<any
    domain>`, so two spaces meet as soon as their numeric aliases can be equal, whatever their
    domains: that is when they are as long, and the longer prefix is the shorter one followed
    by digits only (`81` + 7 digits and `811` + 6 digits both give `811000000`)."""
    fa, fb = a.prefix.casefold(), b.prefix.casefold()
    if len(fa) + a.digits != len(fb) + b.digits:
        return None
    (short, _), (long, space) = sorted(((fa, a), (fb, b)), key=lambda pair: len(pair[0]))
    if not long.startswith(short) or long[len(short) :].strip(_DIGITS):
        return None
    return space.prefix + "0" * space.digits


def overlapping_spaces(spaces: Sequence[AliasSpace]) -> list[tuple[int, int, str]]:
    """Every pair (i, j), i < j, of spaces that meet, with a numeric alias both can produce.
    Only spaces of one bucket can meet, so hundreds of integrations are checked without
    comparing each with each."""
    buckets: dict[tuple[int, str], list[int]] = {}
    for index, space in enumerate(spaces):
        buckets.setdefault(space._bucket(), []).append(index)
    pairs = []
    for members in buckets.values():
        for position, j in enumerate(members):
            for i in members[:position]:
                example = shared_alias(spaces[i], spaces[j])
                if example is not None:
                    pairs.append((i, j, example))
    return sorted(pairs)


# RFC 3986's scheme: a letter, then letters, digits, "+", "-" or "." (sip, sips, h323, tel, …)
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")


def normalise(alias: str) -> str:
    """An alias as every lookup keys it, whether a Pexip node dialled it (the policy request's
    local_alias) or an admin typed it: the address inside angle brackets (`<sip:…>`,
    `SIP:<…>`, `"Name" <sip:…>`), without a URI scheme
    (`sip:`, `h323:`, `tel:`: a scheme-shaped part before the first colon, with no `@`, so
    `1234:5` keeps its colon) and `;parameters`, trimmed and case-folded. So
    `<SIP:VMR123@Example.COM;transport=tls>` is `vmr123@example.com`."""
    text = alias.strip()
    if "<" not in text and ":" not in text and ";" not in text:
        return text.casefold()  # the common case (the forms we hand out): nothing to take off
    opening = text.find("<")  # `<sip:…>`, `SIP:<…>` or a name-addr (`"Bob" <sip:…>`)
    if opening >= 0 and ">" in text[opening:]:
        text = text[opening + 1 : text.index(">", opening)]
    head, sep, rest = text.partition(":")
    if sep and _SCHEME_RE.fullmatch(head):
        text = rest
    text = text.split(";", 1)[0].strip()
    return text.casefold()


def _canonical(raw_id: str) -> str:
    return str(uuid.UUID(hex=raw_id.replace("-", "")))


def _search(text: str) -> Token | None:
    match = _TOKEN_RE.search(text)
    if match is None:
        return None
    kind: TokenKind = "PXPS" if match.group(1) == "PXPS" else "TOK"
    return Token(kind=kind, id=_canonical(match.group(2)))


def find_token(body: str) -> Token | None:
    """The first alias-ID (`PXPS:-…#`) or placeholder (`TOK:-…#`) token in a text or HTML body.

    Mail clients re-wrap HTML, so a token may arrive split by tags (`PXPS:-<span>…</span>#`),
    entity-encoded or with zero-width characters; the visible text is searched as a fallback.
    """
    if not body:
        return None
    found = _search(body)
    if found is not None:
        return found
    visible = htmltext.visible(body)
    found = _search(visible)
    if found is not None:
        return found
    return _search(re.sub(r"\s+", "", visible))
