"""Crash and corrupt, 50 rounds: a writer is SIGKILLed at random under load, then its files are
damaged at random (byte flips in journals and snapshot, truncations of the snapshot and of sealed
journals). Every round the store either opens with every acknowledged alias, or refuses to open,
and `store repair` then recovers every acknowledged record the damage did not hit."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from vmrsched.store import Store, StoreCorruptError
from vmrsched.store.repair import repair

HERE = Path(__file__).parent
pytestmark = pytest.mark.slow


def _journals(directory: Path) -> list[Path]:
    found = [p for p in directory.glob("journal.*.log")]
    return sorted(found, key=lambda p: int(p.name.split(".")[1]))


def _line_ids(data: bytes, position: int) -> set[str]:
    """Alias ids in the journal line holding `position` (a damaged newline belongs to the line
    it ends)."""
    start = data.rfind(b"\n", 0, position) + 1
    end = data.find(b"\n", position)
    line = data[start : end if end >= 0 else len(data)]
    return {m.decode() for m in re.findall(rb'"alias_id":"([0-9a-f-]{36})"', line)}


def _snapshot_regions(raw: bytes) -> list[tuple[int, int, str]]:
    """(start, end, alias id) of each document and of each document's checksum entry."""
    text = raw.decode()
    data = json.loads(text)
    decoder = json.JSONDecoder()
    regions = []
    doc_alias = {}
    for match in re.finditer(r'"(\d+)":\{"alias_id":"([0-9a-f-]{36})"', text):
        brace = match.start() + len(match.group(1)) + 3
        _, end = decoder.raw_decode(text, brace)
        regions.append((match.start(), end, match.group(2)))
        doc_alias[match.group(1)] = match.group(2)
    crc_at = text.rfind('"_crc":')
    if crc_at >= 0:
        for match in re.finditer(r'"(\d+)":(\d+)', text[crc_at:]):
            alias = doc_alias.get(match.group(1))
            if alias:
                regions.append((crc_at + match.start(), crc_at + match.end(), alias))
    assert data
    return regions


def _damage(directory: Path, rng: random.Random) -> tuple[str, set[str]]:
    """Damage one file at random; returns what was done and the alias ids it hit."""
    journals = _journals(directory)
    snapshot = directory / "store.json"
    kind = rng.choice(["none", "none", "flip-journal", "flip-journal", "flip-snapshot", "cut"])
    if kind == "flip-journal" and journals:
        path = rng.choice(journals)
        data = path.read_bytes()
        if not data:
            return "none", set()
        at = rng.randrange(len(data))
        hit = _line_ids(data, at)
        flipped = bytes([data[at] ^ (1 << rng.randrange(8))])
        path.write_bytes(data[:at] + flipped + data[at + 1 :])
        return f"flip {path.name}@{at}", hit
    if kind == "flip-snapshot" and snapshot.exists():
        raw = snapshot.read_bytes()
        at = rng.randrange(len(raw))
        hit = {alias for start, end, alias in _snapshot_regions(raw) if start <= at < end}
        flipped = bytes([raw[at] ^ (1 << rng.randrange(8))])
        snapshot.write_bytes(raw[:at] + flipped + raw[at + 1 :])
        return f"flip store.json@{at}", hit
    if kind == "cut":
        sealed = journals[:-1]  # every journal but the live one was sealed when it was closed
        if sealed:
            path = rng.choice(sealed)
            data = path.read_bytes()
            at = rng.randrange(len(data)) if data else 0
            hit = {m.decode() for m in re.findall(rb'"alias_id":"([0-9a-f-]{36})"', data[at:])}
            hit |= _line_ids(data, at) if data else set()
            path.write_bytes(data[:at])
            return f"cut {path.name}@{at}", hit
        if snapshot.exists():
            raw = snapshot.read_bytes()
            at = rng.randrange(len(raw))
            hit = {alias for start, end, alias in _snapshot_regions(raw) if end > at}
            snapshot.write_bytes(raw[:at])
            return f"cut store.json@{at}", hit
    return "none", set()


def test_fifty_rounds_of_sigkill_and_damage(tmp_path: Path) -> None:
    rng = random.Random(2026)
    acknowledged: set[str] = set()
    env = dict(os.environ, PYTHONPATH=str(HERE.parents[1]))
    refused = repaired_rounds = 0
    for round_no in range(50):
        child = subprocess.Popen(
            [sys.executable, str(HERE / "store_writer.py"), str(tmp_path), str(round_no)],
            stdout=subprocess.PIPE,
            env=env,
        )
        assert child.stdout is not None
        first = child.stdout.readline()  # writing under load, however slowly the child started
        time.sleep(rng.uniform(0.1, 0.4))
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate()
        out = first + out
        for line in out.decode().splitlines():
            if line.count(" ") == 1:
                acknowledged.add(line.split()[0])
        what, hit = _damage(tmp_path, rng)
        try:
            store = Store(tmp_path)
        except StoreCorruptError:
            refused += 1
            assert what != "none", f"round {round_no}: refused undamaged files"
            repair(tmp_path)
            repaired_rounds += 1
            acknowledged -= hit  # lost to the damage itself, and only those
            store = Store(tmp_path)
        present = {r["alias_id"] for r in store.records()}
        present |= set(store._archived)
        missing = acknowledged - present
        assert not missing, f"round {round_no} ({what}): lost {sorted(missing)[:3]}"
        store.close(compact=round_no % 7 == 6)
    assert len(acknowledged) > 200
    assert refused >= 5 and repaired_rounds == refused
    numerics = [orjson.dumps(r["numeric_alias"]) for r in Store(tmp_path).records()]
    assert len(numerics) == len(set(numerics))  # no alias handed out twice
