"""The proof that a request was passed on by another instance (vmrsched/http/forwarding.py): it
holds for the request it was made for, at the instance it was meant for, within its window,
once; any change to what it covers, another key, or a client that is not an address undoes it."""

from __future__ import annotations

import pytest

from vmrsched.http.forwarding import AT, CLIENT, NONCE, PROOF, WINDOW, Proofs, proof

KEY = bytes(range(32))
PATH = "/api/addin/v1/alpha/single-use-vmrs?x=1"


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_proof_names_the_client_at_the_instance_it_was_made_for_once() -> None:
    clock = Clock()
    sender, receiver = Proofs(clock=clock), Proofs(clock=clock)
    headers = sender.sign(KEY, "POST", PATH, "192.0.2.10", "b-1")
    assert set(headers) == {PROOF, CLIENT, AT, NONCE}
    assert receiver.verify(KEY, "POST", PATH, headers, "b-1") == "192.0.2.10"
    assert receiver.verify(KEY, "POST", PATH, headers, "b-1") is None  # a replay
    again = sender.sign(KEY, "POST", PATH, "192.0.2.10", "b-1")  # a new nonce: a new proof
    assert again[PROOF] != headers[PROOF]
    assert receiver.verify(KEY, "POST", PATH, again, "b-1") == "192.0.2.10"


@pytest.mark.parametrize(
    ("method", "path", "me", "key"),
    [
        ("DELETE", PATH, "b-1", KEY),  # another method
        ("POST", "/api/addin/v1/beta/single-use-vmrs?x=1", "b-1", KEY),  # another path
        ("POST", "/api/addin/v1/alpha/single-use-vmrs?x=2", "b-1", KEY),  # another query
        ("POST", PATH, "c-1", KEY),  # another instance
        ("POST", PATH, "b-1", bytes(32)),  # another key
    ],
)
def test_a_proof_holds_for_its_own_request_only(
    method: str, path: str, me: str, key: bytes
) -> None:
    clock = Clock()
    headers = Proofs(clock=clock).sign(KEY, "POST", PATH, "192.0.2.10", "b-1")
    assert Proofs(clock=clock).verify(key, method, path, headers, me) is None


@pytest.mark.parametrize(
    ("header", "value"),
    [
        (CLIENT, "198.51.100.1"),  # another client claimed
        (AT, "1800000001"),  # another time
        (NONCE, "00" * 16),  # another nonce
        (PROOF, "0" * 64),  # a made-up proof
        (PROOF, ""),
        (AT, "soon"),
    ],
)
def test_tampering_with_any_part_undoes_the_proof(header: str, value: str) -> None:
    clock = Clock()
    headers = Proofs(clock=clock).sign(KEY, "POST", PATH, "192.0.2.10", "b-1")
    assert Proofs(clock=clock).verify(KEY, "POST", PATH, {**headers, header: value}, "b-1") is None


def test_a_proof_is_good_within_its_window_either_way_of_the_clock() -> None:
    made = Clock()
    headers = Proofs(clock=made).sign(KEY, "GET", PATH, "2001:db8::1", "b-1")
    for offset, good in (
        (-WINDOW, True),
        (WINDOW, True),
        (WINDOW + 1, False),
        (-WINDOW - 1, False),
    ):
        late = Clock(made.now + offset)
        found = Proofs(clock=late).verify(KEY, "GET", PATH, headers, "b-1")
        assert (found == "2001:db8::1") is good, offset


def test_only_an_address_is_taken_as_the_client() -> None:
    clock = Clock()
    for client, taken in (
        ("unknown", True),
        ("not an address", False),
        ("10.0.0.1, 10.0.0.2", False),
    ):
        headers = Proofs(clock=clock).sign(KEY, "GET", PATH, client, "b-1")
        assert (Proofs(clock=clock).verify(KEY, "GET", PATH, headers, "b-1") is not None) is taken


def test_proofs_remembered_against_replay_are_bounded_and_age_out() -> None:
    clock = Clock()
    receiver = Proofs(clock=clock, max_seen=2)
    sign = Proofs(clock=clock).sign
    first, second, third = (sign(KEY, "GET", PATH, "192.0.2.1", "b-1") for _ in range(3))
    assert receiver.verify(KEY, "GET", PATH, first, "b-1") is not None
    assert receiver.verify(KEY, "GET", PATH, second, "b-1") is not None
    assert receiver.verify(KEY, "GET", PATH, third, "b-1") is None  # full: not believed
    clock.now += 2 * WINDOW + 1  # the remembered ones have aged out
    fresh = Proofs(clock=clock).sign(KEY, "GET", PATH, "192.0.2.1", "b-1")
    assert receiver.verify(KEY, "GET", PATH, fresh, "b-1") is not None
    assert receiver.verify(KEY, "GET", PATH, first, "b-1") is None  # and is past its window


def test_the_message_is_unambiguous() -> None:
    """Length-prefixed parts: moving text from one part to the next makes another proof."""
    assert proof(KEY, "GET", "/a", "1", "b", "c", "d") != proof(
        KEY, "GET", "/a1", "", "b", "c", "d"
    )
