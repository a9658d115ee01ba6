"""Values that parse but cannot work are refused with their key path: a poll interval that
would spin a core, an alias prefix no dialler takes unescaped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from vmrsched import config
from vmrsched.config import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def doc(server: dict[str, Any] | None = None, **tables: Any) -> dict[str, Any]:
    integ: dict[str, Any] = {
        "name": "alpha",
        "exchange": {"mailbox_name": "VMR", "mailbox_email": "vmr@example.com"},
        "addin": {"token_validation": "none"},
        "single_use": {"alias_prefix": "81"},
    }
    for table, keys in tables.items():
        integ[table] = {**integ.get(table, {}), **keys} if isinstance(keys, dict) else keys
    return {"server": {"listen": "127.0.0.1:8080", **(server or {})}, "integrations": [integ]}


def problems(document: dict[str, Any], base: Path = Path(".")) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config.parse(document, base, {})
    return info.value.problems


@pytest.mark.parametrize("table", ["spool", "exchange", "graph"])
@pytest.mark.parametrize("interval", [0, -1, 0.001])
def test_a_poll_interval_that_would_spin_a_core_is_refused(table: str, interval: float) -> None:
    found = problems(doc(**{table: {"poll_interval_seconds": interval}}))
    assert found == [
        f"integrations[0].{table}.poll_interval_seconds: must be 0.01-3600.0, got "
        f"{float(interval)!r}"
    ]


def test_poll_intervals_from_the_floor_to_an_hour_are_taken() -> None:
    cfg = config.parse(
        doc(spool={"poll_interval_seconds": 0.01}, exchange={"poll_interval_seconds": 3600}),
        Path("."),
        {},
    )
    assert cfg.integrations[0].spool.poll_interval_seconds == 0.01
    assert cfg.integrations[0].exchange.poll_interval_seconds == 3600.0


def test_the_full_example_documents_the_poll_interval_range() -> None:
    text = (ROOT / "config" / "examples" / "full.toml").read_text()
    lines = [line for line in text.splitlines() if line.startswith("poll_interval_seconds")]
    assert lines and all("# 0.01-3600" in line for line in lines)


@pytest.mark.parametrize("prefix", ["a@b", "8 1", "é", "vmr:", "a;b", "<v>", "x\t"])
def test_an_alias_prefix_a_dialler_cannot_take_unescaped_is_refused(prefix: str) -> None:
    assert problems(doc(single_use={"alias_prefix": prefix})) == [
        "integrations[0].single_use.alias_prefix: must be ASCII letters, digits, '.', '_' or '-' "
        "only (aliases are dialled as SIP/H.323 user parts: prefix + digits + @ + domain), got "
        f"{prefix!r}"
    ]


def test_letters_digits_dots_underscores_and_hyphens_make_a_prefix() -> None:
    for prefix in ("81", "vmr", "Meet.", "a_b-c"):
        cfg = config.parse(doc(single_use={"alias_prefix": prefix}), Path("."), {})
        assert cfg.integrations[0].single_use.alias_prefix == prefix
