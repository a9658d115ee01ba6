"""What every command shares: the --config option, and loading the config with every problem
printed under its key path."""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from pathlib import Path

from vmrsched import config

DEFAULT_CONFIG = Path("config/vmrsched.toml")


def terminal(value: object) -> str:
    """`value` as every command prints text that came from outside (a meeting's subject, an
    organizer, a damaged file): each character that is not printable (controls such as ESC,
    and the format characters that reorder or hide text: bidi overrides and isolates, zero
    width ones, line and paragraph separators) and the backslash written as Python escapes
    them, the rest as it is. What a subject holds can then neither move nor hide text on the
    admin's terminal, nor pass for an escape it is not."""
    return "".join(
        char if char.isprintable() and char != "\\" else repr(char)[1:-1] for char in str(value)
    )


def add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG, help="TOML file (default: %(default)s)"
    )


class Unused(dict[str, str]):
    """The environment for a command that uses no secret (invite, failed, manifest): a variable
    the config names but this shell does not set stands for a value nobody reads."""

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return os.environ.get(key, "unused-by-this-command-" + "x" * 24)


def load(path: Path, secrets: bool = True) -> config.Config | None:
    """The config, or None after printing every problem with its key path. `secrets=False`
    for commands that read none: their variables need not be set."""
    try:
        cfg = config.load(path, environ=None if secrets else Unused())
    except config.ConfigError as exc:
        print(f"{path}: {len(exc.problems)} problem(s)", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return None
    moved = moved_data(path, cfg.data_dir)
    if moved is not None:
        print(
            f"{path}: [server] data_dir is relative to this file now, as every path in it: "
            f"{cfg.data_dir} holds no store, but {moved} (where earlier releases read it, from "
            f'the directory the command started in) does. Set data_dir = "{moved}" to keep '
            "using it; starting on an empty data directory would hand its aliases out again",
            file=sys.stderr,
        )
        return None
    return cfg


def moved_data(path: Path, data_dir: Path) -> Path | None:
    """Where an earlier release kept this config's data, when that is not `data_dir` and holds
    the stores `data_dir` lacks: a relative data_dir used to be read from the working
    directory. None when nothing moved."""
    try:
        with path.open("rb") as file:
            written = tomllib.load(file).get("server", {}).get("data_dir", "./data")
    except (OSError, tomllib.TOMLDecodeError, AttributeError):
        return None
    if not isinstance(written, str) or Path(written).is_absolute():
        return None
    earlier = (Path.cwd() / written).resolve()
    if earlier == data_dir.resolve() or (data_dir / "store").exists():
        return None
    return earlier if (earlier / "store").is_dir() else None


def integration(cfg: config.Config, name: str) -> config.IntegrationConfig | None:
    integ = cfg.integration(name)
    if integ is None:
        known = ", ".join(i.name for i in cfg.integrations)
        print(f"no integration named {name!r} (configured: {known})", file=sys.stderr)
    return integ
