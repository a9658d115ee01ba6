"""Command line: `vmrsched serve | check-config | invite | manifest | recover`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from vmrsched import config

DEFAULT_CONFIG = Path("config/vmrsched.toml")


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG, help="TOML file (default: %(default)s)"
    )


def cmd_check_config(args: argparse.Namespace) -> int:
    path = args.path or args.config
    try:
        cfg = config.load(path)
    except config.ConfigError as exc:
        print(f"{path}: {len(exc.problems)} problem(s)", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    for warning in cfg.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{path}: OK, listening on {cfg.server.listen}, data in {cfg.server.data_dir}")
    for integ in cfg.integrations:
        kinds = [
            k
            for k, on in (
                ("single-use", integ.enable_single_use_vmrs),
                ("personal", integ.enable_personal_vmrs),
            )
            if on
        ]
        print(
            f"  {integ.name}: backend {integ.backend}, mailbox "
            f"{integ.exchange.mailbox_email or '-'}, VMRs: {', '.join(kinds)}, "
            f"add-in tokens: {integ.addin.token_validation}"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vmrsched", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    check = sub.add_parser("check-config", help="validate a config file and list every problem")
    check.add_argument("path", nargs="?", type=Path, help="TOML file")
    _add_config(check)
    check.set_defaults(func=cmd_check_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":  # pragma: no cover - `python -m vmrsched.cli`
    sys.exit(main())
