"""What every command shares: the --config option, and loading the config with every problem
printed under its key path."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from vmrsched import config

DEFAULT_CONFIG = Path("config/vmrsched.toml")


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
        return config.load(path, environ=None if secrets else Unused())
    except config.ConfigError as exc:
        print(f"{path}: {len(exc.problems)} problem(s)", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return None


def integration(cfg: config.Config, name: str) -> config.IntegrationConfig | None:
    integ = cfg.integration(name)
    if integ is None:
        known = ", ".join(i.name for i in cfg.integrations)
        print(f"no integration named {name!r} (configured: {known})", file=sys.stderr)
    return integ
