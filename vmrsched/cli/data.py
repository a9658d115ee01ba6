"""`vmrsched store` and `vmrsched failed`: the offline tools on what the service keeps (check,
repair and migrate a store; list the messages that could not be delivered)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from vmrsched import config
from vmrsched.cli.common import add_config, load, terminal


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    store = sub.add_parser(
        "store",
        help="check a store for damage, or repair it from every valid record (store_corrupt)",
    )
    store.add_argument(
        "action",
        choices=("check", "repair", "migrate"),
        help="check reads; repair rewrites; migrate copies to the other backend (--to)",
    )
    store.add_argument("name", nargs="?", help="integration name (default: all)")
    add_config(store)
    store.add_argument("--data-dir", type=Path, help="this data directory instead of the config's")
    store.add_argument(
        "--to",
        choices=("postgresql", "file"),
        help="migrate: into the database [storage] names, or back into files under data_dir",
    )
    store.add_argument(
        "--replace", action="store_true", help="migrate --to postgresql: overwrite what it holds"
    )
    store.set_defaults(func=cmd_store)

    failed = sub.add_parser(
        "failed", help="list the messages that could not be delivered (kept with their reason)"
    )
    add_config(failed)
    failed.add_argument(
        "--data-dir", type=Path, help="read this data directory instead of the config's"
    )
    failed.add_argument("--integration", help="only this integration")
    failed.set_defaults(func=cmd_failed)


def _data_dir(args: argparse.Namespace) -> Path | None:
    """--data-dir, else the config's data_dir (None after printing the config's problems)."""
    if args.data_dir is not None:
        return Path(args.data_dir)
    cfg = load(args.config, secrets=False)
    return cfg.data_dir if cfg is not None else None


def cfg_backend(args: argparse.Namespace) -> str | None:
    """The storage backend the config names (None when it does not load: _data_dir then
    prints its problems)."""
    cfg = load(args.config, secrets=False) if args.config.exists() else None
    return cfg.storage.backend if cfg is not None else None


def _subdirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def cmd_store_migrate(args: argparse.Namespace) -> int:
    """Copy every (or one) integration's records to the other backend, checked on arrival."""
    from vmrsched.errors import ServiceError
    from vmrsched.service.storage import Moved, TransferError, migrate_store
    from vmrsched.store import StoreCorruptError, StoreInUseError

    if args.to is None:
        print("store migrate: say where to, --to postgresql or --to file", file=sys.stderr)
        return 2
    if args.data_dir is not None:
        print(
            "store migrate: the stores are the config's (data_dir); --data-dir is for check "
            "and repair",
            file=sys.stderr,
        )
        return 2
    cfg = load(args.config)
    if cfg is None:
        return 1
    names = [i.name for i in cfg.integrations]
    if args.name:
        if args.name not in names:
            print(f"no integration {args.name!r} in the config", file=sys.stderr)
            return 1
        names = [args.name]
    try:
        moved = migrate_store(cfg, args.to, names, replace=args.replace)
    except StoreInUseError as exc:
        print(f"{exc}: stop the service first", file=sys.stderr)
        return 1
    except (TransferError, StoreCorruptError, ServiceError) as exc:
        print(f"store migrate: {exc}", file=sys.stderr)
        return 1
    records = [item for item in moved if isinstance(item, Moved)]
    for item in moved:
        if isinstance(item, Moved):
            print(f"{item.integration}: {item.source} -> arrived: {item.arrived}")
        else:
            print(f"{item.what}: {item.source} -> arrived: {item.arrived}")
    print(
        f"{len(records)} integration(s) moved to {args.to}; every record, queue, decisions log, "
        "token cache, Graph state and sign-in arrived"
    )
    return 0


def _repair(data_dir: Path, stores: Path, names: list[str]) -> int:
    """Repair with the service stopped: under the data directory's lock, which a running
    service holds for its whole life. A store's own lock is not enough: an integration whose
    store was refused as damaged has let go of it while the service still runs, and would
    read the repaired files back on its next retry."""
    from vmrsched.store import StoreInUseError
    from vmrsched.store.files import lock_directory
    from vmrsched.store.repair import repair

    try:
        held = lock_directory(data_dir, f"the data directory {data_dir}")
    except StoreInUseError as exc:
        print(f"{exc}: stop the service first", file=sys.stderr)
        return 1
    try:
        for name in names:
            try:
                report = repair(stores / name)
            except StoreInUseError as exc:
                print(f"{exc}: stop the service first", file=sys.stderr)
                return 1
            print("\n".join(map(terminal, report.lines())))
            if report.damaged:
                print(f"  repaired: the damaged files are kept in {stores / name}/damaged-*/")
        return 0
    finally:
        os.close(held)


def cmd_store(args: argparse.Namespace) -> int:
    """check: read-only, safe beside a running service; repair: needs the service stopped."""
    if args.action == "migrate":
        return cmd_store_migrate(args)
    from vmrsched.store.repair import check, check_state

    if args.data_dir is None and cfg_backend(args) == "postgresql":
        print(
            f"store {args.action}: the config keeps the records in the shared database "
            '([storage] backend = "postgresql"), where each commit is one transaction and there '
            "are no files to check or repair; --data-dir DIR checks file stores (such as the ones "
            "migrated from)",
            file=sys.stderr,
        )
        return 2
    data_dir = _data_dir(args)
    if data_dir is None:
        return 1
    stores = config.DataLayout(data_dir).stores
    names = _subdirs(stores)
    if args.name:
        if args.name not in names:
            print(f"no store for integration {args.name!r} under {stores}", file=sys.stderr)
            return 1
        names = [args.name]
    if args.action == "repair":
        return _repair(data_dir, stores, names)
    damaged = False
    for name in names:
        report = check(stores / name)
        damaged = damaged or report.damaged
        print("\n".join(map(terminal, report.lines())))
    others = check_state(data_dir, args.name, _spools(args))
    if others:
        print(f"{data_dir}: queues, decisions, sign-in, token caches and spool calendars")
        for item in others:
            print(f"  {item.path}: {'DAMAGED: ' if item.damaged else ''}{item.detail}")
    if damaged:
        print("damage found: stop the service, then run `vmrsched store repair`")
    if any(item.damaged for item in others):
        print(
            "damage found in other files: the service keeps what they still hold and sets "
            "them aside as <name>.damaged-<time> (alarm state_damaged); look at those, then "
            "delete them"
        )
    return 1 if damaged or any(item.damaged for item in others) else 0


def _spools(args: argparse.Namespace) -> dict[str, Path]:
    """The spool directories the config names (none with --data-dir: those under it are
    found without a config)."""
    if args.data_dir is not None:
        return {}
    cfg = load(args.config, secrets=False)
    if cfg is None:
        return {}
    return {i.name: i.spool_dir(cfg.data_dir) for i in cfg.integrations if i.backend == "spool"}


def cmd_failed(args: argparse.Namespace) -> int:
    """Read-only: safe beside a running service."""
    from datetime import UTC, datetime

    from vmrsched.store.outqueue import Failed, read_failed

    found: dict[str, list[Failed]]
    if args.data_dir is None:
        cfg = load(args.config, secrets=False)
        if cfg is None:
            return 1
        if args.integration and cfg.integration(args.integration) is None:
            print(f"failed: the config has no integration {args.integration!r}", file=sys.stderr)
            return 1
        data_dir: Path | None = cfg.data_dir
        if cfg.storage.backend == "postgresql":  # the queues are in the shared database
            from vmrsched.errors import ServiceError
            from vmrsched.service.storage import failed_messages

            try:
                found = failed_messages(cfg)
            except ServiceError as exc:
                print(f"failed: {exc}", file=sys.stderr)
                return 1
            data_dir = None
    else:
        data_dir = Path(args.data_dir)
        if not data_dir.is_dir():
            print(f"failed: no data directory at {data_dir}", file=sys.stderr)
            return 1
    if data_dir is not None:
        queues = config.DataLayout(data_dir).queues
        found = {name: read_failed(queues / name) for name in _subdirs(queues)}
        if args.data_dir is not None and args.integration and args.integration not in found:
            print(
                f"failed: no queue of integration {args.integration!r} under {queues}",
                file=sys.stderr,
            )
            return 1
    names = sorted(found)
    if args.integration:
        names = [n for n in names if n == args.integration]
    total = 0
    for name in names:
        for item in sorted(found[name], key=lambda f: f.at):
            total += 1
            when = datetime.fromtimestamp(item.at, UTC).isoformat(timespec="seconds")
            m = item.message
            print(
                f"{when}  {name}  {m.kind} {m.outcome}  meeting {terminal(m.meeting_uid)}  "
                f"to {terminal(', '.join(m.recipients))}  correlation {m.correlation_id}\n"
                f"    {terminal(item.reason)}"
            )
    print(f"{total} failed message(s)")
    return 0
