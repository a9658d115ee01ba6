from __future__ import annotations

import random
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmrsched.rules import aliases

PREFIX = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8)


@given(prefix=PREFIX, length=st.integers(6, 15), seed=st.integers(0, 2**32))
def test_generated_alias_shape(prefix: str, length: int, seed: int) -> None:
    rng = random.Random(seed)
    a = aliases.generate_alias(prefix, length, "video.example.com", lambda _: False, rng)
    assert a.numeric_alias.startswith(prefix)
    digits = a.numeric_alias[len(prefix) :]
    assert len(digits) == length and digits.isdigit()
    assert a.alias == f"{a.numeric_alias}@video.example.com"
    parsed = uuid.UUID(a.alias_id)
    assert parsed.version == 4 and str(parsed) == a.alias_id


@given(seed=st.integers(0, 2**32))
def test_collisions_are_retried_until_free(seed: int) -> None:
    rng = random.Random(seed)
    taken: set[str] = set()
    for _ in range(50):
        a = aliases.generate_alias("v", 6, "d.example", taken.__contains__, rng)
        assert a.numeric_alias not in taken
        taken.add(a.numeric_alias)


def test_full_space_raises_instead_of_reusing() -> None:
    with pytest.raises(aliases.AliasExhaustedError):
        aliases.generate_alias("v", 6, "d", lambda _: True, random.Random(1), attempts=5)


def test_same_seed_same_alias() -> None:
    a = aliases.generate_alias("v", 8, "d", lambda _: False, random.Random(7))
    b = aliases.generate_alias("v", 8, "d", lambda _: False, random.Random(7))
    assert a == b


@pytest.mark.parametrize("prefix,length", [("", 6), ("123456789", 6), ("v", 5), ("v", 16)])
def test_out_of_range_generation_is_refused(prefix: str, length: int) -> None:
    with pytest.raises(ValueError):
        aliases.generate_alias(prefix, length, "d", lambda _: False)


noise = st.text(alphabet=st.characters(blacklist_characters="#:"), max_size=40)


@given(u=st.uuids(version=4), before=noise, after=noise, kind=st.sampled_from(["PXPS", "TOK"]))
def test_token_is_found_in_any_surrounding_text(
    u: uuid.UUID, before: str, after: str, kind: str
) -> None:
    body = f"{before}{kind}:-{u}#{after}"
    token = aliases.find_token(body)
    assert token is not None and token.kind == kind and token.id == str(u)


@given(u=st.uuids(version=4), tag=st.sampled_from(["<span>", "<b >", "<font color=red>"]))
def test_token_split_by_markup_or_entities_is_found(u: uuid.UUID, tag: str) -> None:
    text = str(u)
    body = f"<p>PXPS:-{text[:8]}{tag}{text[8:]}</span>&#35;</p>"
    token = aliases.find_token(body)
    assert token is not None and token.id == text


@given(u=st.uuids(version=4))
def test_token_text_round_trips(u: uuid.UUID) -> None:
    tok = aliases.Token("PXPS", str(u))
    assert aliases.find_token(tok.text) == tok


@given(st.text(max_size=200))
def test_arbitrary_text_never_crashes(body: str) -> None:
    token = aliases.find_token(body)
    if token is not None:
        assert str(uuid.UUID(token.id)) == token.id


def test_first_token_wins() -> None:
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    assert aliases.find_token(f"PXPS:-{a}# PXPS:-{b}#") == aliases.Token("PXPS", a)


def test_malformed_tokens_are_not_tokens() -> None:
    assert aliases.find_token("PXPS:-not-a-uuid#") is None
    assert aliases.find_token("PXPS-1b4e28ba-2fa1-41d2-883f-0016d3cca427#") is None
    assert aliases.find_token("") is None


# --- alias spaces of two integrations ---------------------------------------------------------


@pytest.mark.parametrize(
    "a,b,shared",
    [
        (("vmr", 6), ("vmr", 6), "vmr000000"),  # two integrations on the defaults
        (("81", 7), ("811", 6), "811000000"),  # the numeric ranges
        (("811", 6), ("81", 7), "811000000"),
        (("VMR", 6), ("vmr", 6), "vmr000000"),  # dialled aliases are compared case-folded
        (("8", 8), ("81234", 4), "812340000"),
    ],
)
def test_spaces_that_can_produce_the_same_alias_meet(
    a: tuple[str, int], b: tuple[str, int], shared: str
) -> None:
    found = aliases.shared_alias(aliases.AliasSpace(*a, "d"), aliases.AliasSpace(*b, "d"))
    assert found is not None and found.casefold() == shared


@pytest.mark.parametrize(
    "a,b",
    [
        (("81", 7), ("82", 7)),
        (("81", 7), ("81", 8)),  # lengths differ
        (("81", 7), ("8a", 7)),  # the longer prefix goes on with a letter: digits never match
        (("vmr", 6), ("mtg", 6)),
        (("vmr", 6), ("vmr1", 6)),
    ],
)
def test_disjoint_spaces_do_not_meet(a: tuple[str, int], b: tuple[str, int]) -> None:
    assert aliases.shared_alias(aliases.AliasSpace(*a, "d"), aliases.AliasSpace(*b, "d")) is None


SMALL_PREFIX = st.text(alphabet="ab0123", min_size=1, max_size=3)


def _every(space: aliases.AliasSpace) -> set[str]:
    return {f"{space.prefix}{n:0{space.digits}d}" for n in range(10**space.digits)}


@given(pa=SMALL_PREFIX, na=st.integers(1, 3), pb=SMALL_PREFIX, nb=st.integers(1, 3))
def test_shared_alias_agrees_with_enumerating_both_spaces(
    pa: str, na: int, pb: str, nb: int
) -> None:
    a, b = aliases.AliasSpace(pa, na, "d"), aliases.AliasSpace(pb, nb, "d")
    common = _every(a) & _every(b)
    found = aliases.shared_alias(a, b)
    assert (found is None) == (not common)
    assert found is None or found in common
    assert bool(aliases.overlapping_spaces([a, b])) == bool(common)


def test_overlaps_are_found_among_many_spaces_without_comparing_every_pair() -> None:
    spaces = [aliases.AliasSpace(f"v{i}", 6, "d") for i in range(2000)]
    spaces.append(aliases.AliasSpace("v1", 7, "d"))  # meets v10 … v19 (6 digits)
    pairs = aliases.overlapping_spaces(spaces)
    assert {(i, j) for i, j, _ in pairs} == {(i, 2000) for i in range(10, 20)}
    assert all(example.startswith(f"v{i}") for i, _, example in pairs)


# --- one normalisation for a node's dialled alias and an admin's typed one --------------------


@pytest.mark.parametrize(
    "typed,key",
    [
        # as an admin types it (the store's lookup)
        ("SIP:Vmr1@Example.COM", "vmr1@example.com"),
        ("h323:vmr1", "vmr1"),
        (" vmr1@d ", "vmr1@d"),
        # as a node dials it (the policy request's local_alias)
        ("<SIP:Room@Example.COM;x=y>", "room@example.com"),
        ("h323:1234", "1234"),
        ("1234:5", "1234:5"),  # digits are no scheme
        ("sips:vmr1@d", "vmr1@d"),
        ("tel:+4412345", "+4412345"),
        ("<sip:vmr1@d>", "vmr1@d"),
        ("SIP:<Vmr1@d>", "vmr1@d"),  # the scheme outside the brackets
        ('"Room One" <sip:vmr1@d;transport=tls>', "vmr1@d"),  # a name-addr
        ("vmr1@d;transport=tls", "vmr1@d"),
        ("vmr1@d:5061", "vmr1@d:5061"),  # a colon after the `@` is no scheme's
        (":vmr1", ":vmr1"),  # nor is an empty head
        ("Straße@d", "strasse@d"),  # case-folded, not only lower-cased
    ],
)
def test_normalise_drops_scheme_brackets_and_parameters_and_folds_case(
    typed: str, key: str
) -> None:
    assert aliases.normalise(typed) == key


SCHEMES = st.sampled_from(["", "sip:", "SIP:", "sips:", "h323:", "H323:", "tel:"])
PARAMS = st.sampled_from(["", ";transport=tls", ";user=phone", ";x=y;z"])


@given(
    prefix=PREFIX,
    seed=st.integers(0, 2**32),
    scheme=SCHEMES,
    params=PARAMS,
    bracket=st.booleans(),
    upper=st.booleans(),
)
def test_every_form_of_one_of_our_aliases_normalises_to_the_alias(
    prefix: str, seed: int, scheme: str, params: str, bracket: bool, upper: bool
) -> None:
    a = aliases.generate_alias(prefix, 6, "Video.Example.com", lambda _: False, random.Random(seed))
    for plain in (a.alias, a.numeric_alias):
        text = scheme + (plain.upper() if upper else plain) + params
        form = f" <{text}> " if bracket else text
        assert aliases.normalise(form) == plain.casefold()


@given(st.integers(min_value=0, max_value=2**32))
def test_an_alias_id_is_a_canonical_version_4_uuid(seed: int) -> None:
    """What uuid.UUID(int=…, version=4) prints for the same 128 bits."""
    bits = random.Random(seed).getrandbits(128)
    made = aliases.new_uuid(random.Random(seed))
    assert made == str(uuid.UUID(int=bits, version=4))
    assert uuid.UUID(made).version == 4 and uuid.UUID(made).variant == uuid.RFC_4122


def test_the_system_source_hands_each_byte_of_the_os_csprng_out_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Read from os.urandom a pool at a time; consecutive draws never share a byte, and a
    draw larger than what is left comes from a fresh read."""
    reads: list[int] = []
    counter = iter(range(1, 1 << 30))

    def urandom(count: int) -> bytes:
        reads.append(count)
        return bytes(next(counter) % 256 for _ in range(count))

    monkeypatch.setattr(aliases.os, "urandom", urandom)
    source = aliases.PooledSystemRandom()
    assert source.getrandbits(16) == 0x0102 and source.getrandbits(8) == 0x03
    assert source.getrandbits(12) == 0x0405 >> 4  # whole bytes, the surplus bits dropped
    assert source.getrandbits(0) == 0
    assert reads == [source.POOL_BYTES]
    source.getrandbits(8 * (source.POOL_BYTES - 5))  # the pool is used up exactly
    assert reads == [source.POOL_BYTES]
    source.getrandbits(8)
    assert reads == [source.POOL_BYTES, source.POOL_BYTES]
    assert 0.0 <= source.random() < 1.0
    with pytest.raises(NotImplementedError):
        source.getstate()
    with pytest.raises(NotImplementedError):
        source.setstate(())


def test_a_forked_child_does_not_repeat_its_parents_draws() -> None:
    """The pool is the process's: a child starts from its own read of the OS's generator."""
    import os

    source = aliases.PooledSystemRandom()
    source.getrandbits(8)  # the pool is filled
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        os.write(write_end, source.getrandbits(256).to_bytes(32, "big"))
        os._exit(0)
    os.close(write_end)
    os.waitpid(child, 0)
    theirs = os.read(read_end, 32)
    os.close(read_end)
    assert theirs != source.getrandbits(256).to_bytes(32, "big")
