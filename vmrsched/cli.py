"""Command line: `vmrsched serve | check-config | invite | manifest | recover | store | failed |
aliases | decisions`."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from vmrsched import cli_admin, config

DEFAULT_CONFIG = Path("config/vmrsched.toml")


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG, help="TOML file (default: %(default)s)"
    )


class _Unused(dict[str, str]):
    """The environment for a command that uses no secret (invite, failed, manifest): a variable
    the config names but this shell does not set stands for a value nobody reads."""

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return os.environ.get(key, "unused-by-this-command-" + "x" * 24)


def _load(path: Path, secrets: bool = True) -> config.Config | None:
    """The config, or None after printing every problem with its key path. `secrets=False`
    for commands that read none: their variables need not be set."""
    try:
        return config.load(path, environ=None if secrets else _Unused())
    except config.ConfigError as exc:
        print(f"{path}: {len(exc.problems)} problem(s)", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return None


def _integration(cfg: config.Config, name: str) -> config.IntegrationConfig | None:
    integ = cfg.integration(name)
    if integ is None:
        known = ", ".join(i.name for i in cfg.integrations)
        print(f"no integration named {name!r} (configured: {known})", file=sys.stderr)
    return integ


def cmd_check_config(args: argparse.Namespace) -> int:
    path = args.path or args.config
    cfg = _load(path)
    if cfg is None:
        return 1
    for warning in cfg.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    from vmrsched.http.addin import missing_vendor_files

    for missing in missing_vendor_files(cfg):
        print(f"warning: {missing}", file=sys.stderr)
    unusable = data_dir_problem(cfg.data_dir)
    if unusable:
        print(f"{path}: server.data_dir: {unusable}", file=sys.stderr)
        return 1
    if args.online:
        return _check_online(cfg, args.organizer or "", args.outside or "")
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
    _print_pexip(cfg)
    return 0


def data_dir_problem(data_dir: Path) -> str:
    """Why the service could not keep its state in `data_dir` ("" when it can): the directory,
    or the nearest existing one above it that it would be made in, must be a writable folder."""
    here = data_dir.absolute()
    while not here.exists() and here != here.parent:
        here = here.parent
    if not here.is_dir():
        return f"{data_dir} cannot be made: {here} is not a directory"
    if not os.access(here, os.W_OK | os.X_OK):
        return f"{data_dir} cannot be written: {here} is not writable by this user"
    return ""


def _print_pexip(cfg: config.Config) -> None:
    """How Pexip Infinity finds the rooms: what to enter in its policy profile."""
    policy = [i.name for i in cfg.integrations if i.pexip.mode == "policy"]
    if not policy:
        return
    auth = (
        f"username {cfg.server.policy_username!r} and the password from policy_password_env"
        if cfg.server.policy_username
        else "no credentials (set [server] policy_username and policy_password_env)"
    )
    print(
        f"Pexip: integrations {', '.join(policy)} are served by external policy. In Pexip "
        "Infinity: Call control > Policy profiles, add a profile with 'Apply external policy "
        f"to service configuration' on, external policy server URI {cfg.server.base_url} (the "
        f"node appends /policy/v1/service/configuration), {auth}; then use the profile on the "
        "system locations of the Conferencing Nodes."
    )
    if config.is_loopback_host(urlsplit(cfg.server.base_url).hostname or ""):
        print(
            f"warning: {cfg.server.base_url} names this machine only: a Conferencing Node "
            "cannot reach it; set [server] public_url to the URL the nodes reach this service at",
            file=sys.stderr,
        )
    elif cfg.server.base_url.startswith("http://") and not cfg.server.on_loopback:
        print(
            "warning: the policy URL is plain http: set [server] public_url to the https URL "
            "nodes reach this service at",
            file=sys.stderr,
        )


def _check_online(cfg: config.Config, organizer: str = "", outside: str = "") -> int:
    """Connect to every integration's mailbox and report what works; a warning (a mailbox
    reached that should be out of reach) fails the check as a refusal does."""
    from vmrsched.service import check_online

    failed = False
    for integ in cfg.integrations:
        print(f"{integ.name} ({integ.backend}):")
        for ok, text in check_online(cfg, integ, organizer, outside):
            print(f"  {'ok  ' if ok else 'WARN' if ok is None else 'FAIL'}  {text}")
            failed = failed or not ok
    return 1 if failed else 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vmrsched")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vmrsched", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    check = sub.add_parser("check-config", help="validate a config file and list every problem")
    check.add_argument("path", nargs="?", type=Path, help="TOML file")
    check.add_argument(
        "--online", action="store_true", help="also connect to each mailbox and report what works"
    )
    check.add_argument(
        "--organizer",
        metavar="ADDRESS",
        help="with --online: whether this organizer's meetings can be updated (in the "
        "impersonation or RBAC scope)",
    )
    check.add_argument(
        "--outside",
        metavar="ADDRESS",
        help="with --online: a mailbox the service must not reach; reaching it is a warning "
        "(an unscoped impersonation role, or tenant-wide consent on Graph)",
    )
    _add_config(check)
    check.set_defaults(func=cmd_check_config)
    _register_service_commands(sub)
    cli_admin.register(sub, _add_config)
    for name in ("aliases", "decisions"):
        sub.choices[name].set_defaults(func=cmd_admin)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # `aliases show --config X ALIAS`: argparse gives up on a positional after an option
        if getattr(args, "alias", "") is None and len(extra) == 1 and not extra[0].startswith("-"):
            args.alias = extra[0]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    result: int = args.func(args)
    return result


# --- serve ------------------------------------------------------------------------------------


async def _serve(cfg: config.Config) -> int:
    import asyncio
    import logging
    import signal

    from aiohttp import web

    from vmrsched import service as service_mod
    from vmrsched.errors import ServiceError
    from vmrsched.http.app import create_app
    from vmrsched.http.guard import (
        Limits,
        RateLimitedLog,
        connection_cap,
        guarded,
        raise_fd_limit,
    )
    from vmrsched.store import StoreInUseError

    log = logging.getLogger("vmrsched")
    server = cfg.server
    # the address first: a port someone else holds must leave the data directory untouched
    try:
        sock = _listening_socket(server.host, server.port)
    except (OSError, OverflowError, ValueError) as exc:
        log.error("cannot listen on %s: %s", server.listen, exc)
        return 1
    try:
        service = service_mod.start(cfg)
    except StoreInUseError as exc:
        sock.close()
        log.error("%s: is another vmrsched serving it?", exc)
        return 1
    except ServiceError as exc:  # the shared database does not answer: one line, not a trace
        sock.close()
        log.error("cannot start: %s", exc.message)
        return 1
    except OSError as exc:  # the data directory cannot be made or written: one line, not a trace
        sock.close()
        log.error(
            "cannot keep state in %s: %s (%s)",
            cfg.data_dir,
            exc.strerror or exc,
            exc.filename or cfg.data_dir,
        )
        return 1
    limits = Limits(
        connection_cap(server.max_connections, raise_fd_limit()), server.header_timeout_seconds
    )
    for name in ("asyncio", "aiohttp.server", "aiohttp.web"):
        logging.getLogger(name).addFilter(RateLimitedLog())
    runner = web.AppRunner(
        create_app(service),
        access_log=None,
        handle_signals=False,
        keepalive_timeout=server.keepalive_timeout_seconds,
    )
    await runner.setup()
    loop = asyncio.get_running_loop()
    try:
        listener = await loop.create_server(
            guarded(runner.server, limits),  # type: ignore[arg-type]
            sock=sock,
            backlog=512,
        )
    except (OSError, OverflowError, ValueError) as exc:
        log.error("cannot listen on %s: %s", server.listen, exc)
        await runner.cleanup()
        service.stop()
        return 1
    stopping = asyncio.Event()
    reloads: set[asyncio.Task[object]] = set()

    def reload() -> None:
        task: asyncio.Task[object] = loop.create_task(service.reload_async())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    loop.add_signal_handler(signal.SIGINT, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, reload)
    log.info(
        "vmrsched listening on http://%s (integrations: %s)",
        cfg.server.listen,
        ", ".join(service.integration_names()),
    )
    await stopping.wait()
    log.info("shutting down")
    listener.close()
    await runner.cleanup()
    service.stop()  # nothing else runs on the loop any more; flushes queues and stores
    log.info("stopped")
    return 0


def _listening_socket(host: str, port: int) -> socket.socket:
    """The server's socket, bound before anything else starts (SO_REUSEADDR, as
    loop.create_server would set it; an IPv6 literal gets an IPv6 socket)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def cmd_serve(args: argparse.Namespace) -> int:
    import asyncio

    from vmrsched import logs

    cfg = _load(args.config)
    if cfg is None:
        return 1
    logs.setup(args.log_format or cfg.server.log_format, cfg.server.log_level)
    for warning in cfg.warnings:
        import logging

        logging.getLogger("vmrsched").warning("%s", warning)
    return asyncio.run(_serve(cfg))


# --- invite -----------------------------------------------------------------------------------


def cmd_invite(args: argparse.Namespace) -> int:
    from vmrsched import invites
    from vmrsched.service import drop_invite

    cfg = _load(args.config, secrets=False)
    integ = _integration(cfg, args.integration) if cfg else None
    if cfg is None or integ is None:
        return 1
    if integ.backend != "spool":
        print(f"{integ.name} uses the {integ.backend} backend; invite needs spool", file=sys.stderr)
        return 1
    try:
        path, uid = drop_invite(integ, cfg.data_dir, invites.InviteOptions.from_args(args))
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    print(f"queued {path} (UID {uid})")
    return 0


def cmd_manifest(args: argparse.Namespace) -> int:
    from vmrsched.http import manifest

    cfg = _load(args.config, secrets=False)
    integ = _integration(cfg, args.name) if cfg else None
    if cfg is None or integ is None:
        return 1
    base = args.base_url or cfg.server.base_url
    if not base.startswith("https://"):
        print(
            f"warning: {base} is not https; Outlook installs add-ins from https only "
            "(set [server] public_url)",
            file=sys.stderr,
        )
    sys.stdout.buffer.write(manifest.build(integ, base))
    return 0


def cmd_recover(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from vmrsched.service import Recovered, recover_integration
    from vmrsched.store import StoreInUseError

    cfg = _load(args.config)
    integ = _integration(cfg, args.name) if cfg else None
    if cfg is None or integ is None:
        return 1

    def report(entry: Recovered) -> None:
        alias = f" -> {entry.alias}" if entry.alias else ""
        detail = f" ({entry.detail})" if entry.detail else ""
        print(
            f"{entry.action:13} {entry.uid}  {entry.subject!r} by {entry.organizer}{alias}{detail}"
        )

    try:
        done = recover_integration(cfg, integ, datetime.now(UTC), args.dry_run, report)
    except StoreInUseError as exc:
        print(f"{exc}: stop the service first", file=sys.stderr)
        return 1
    counts: dict[str, int] = {}
    for entry in done:
        counts[entry.action] = counts.get(entry.action, 0) + 1
    summary = ", ".join(f"{n} {action}" for action, n in sorted(counts.items())) or "nothing"
    print(f"{integ.name}: {summary}{' (dry run)' if args.dry_run else ''}")
    return 1 if counts.get("failed") else 0


def _register_service_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    serve = sub.add_parser("serve", help="run the service")
    _add_config(serve)
    serve.add_argument("--log-format", choices=("text", "json"), help="override [server]")
    serve.set_defaults(func=cmd_serve)

    invite = sub.add_parser("invite", help="drop a meeting request into a spool inbox")
    _add_config(invite)
    invite.add_argument("--integration", required=True, help="integration (spool backend)")
    invite.add_argument("--subject", default="Video meeting", help="SUMMARY (default: %(default)s)")
    invite.add_argument("--start", help="ISO time, e.g. 2026-12-01T10:00+01:00 (default: in 1 h)")
    invite.add_argument("--duration", type=int, default=30, help="minutes (default 30)")
    invite.add_argument("--rrule", help="e.g. FREQ=WEEKLY;COUNT=10")
    invite.add_argument("--token", help="PXPS:-…# or TOK:-…# (default: a fresh TOK placeholder)")
    invite.add_argument("--no-token", action="store_true", help="send a body without a token")
    invite.add_argument(
        "--organizer",
        default="Organizer <organizer@example.com>",
        help="ORGANIZER as 'Name <address>' (default: %(default)s)",
    )
    invite.add_argument("--attendee", action="append", default=[], help="more attendees")
    invite.add_argument("--uid", help="meeting UID (default: random)")
    invite.add_argument("--sequence", type=int, default=0, help="SEQUENCE (default: 0)")
    invite.add_argument("--cancel", action="store_true", help="send METHOD:CANCEL instead")
    invite.set_defaults(func=cmd_invite)

    man = sub.add_parser("manifest", help="print an integration's Outlook add-in manifest")
    man.add_argument("name", help="integration name")
    _add_config(man)
    man.add_argument("--base-url", help="public https URL of this server (default: public_url)")
    man.set_defaults(func=cmd_manifest)

    rec = sub.add_parser("recover", help="re-bind accepted meetings missing from the store")
    rec.add_argument("name", help="integration name")
    _add_config(rec)
    rec.add_argument("--dry-run", action="store_true", help="only list what would be done")
    rec.set_defaults(func=cmd_recover)

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
    _add_config(store)
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
    _add_config(failed)
    failed.add_argument(
        "--data-dir", type=Path, help="read this data directory instead of the config's"
    )
    failed.add_argument("--integration", help="only this integration")
    failed.set_defaults(func=cmd_failed)


def _data_dir(args: argparse.Namespace) -> Path | None:
    """--data-dir, else the config's data_dir (None after printing the config's problems)."""
    if args.data_dir is not None:
        return Path(args.data_dir)
    cfg = _load(args.config, secrets=False)
    return cfg.data_dir if cfg is not None else None


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
    cfg = _load(args.config)
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


def cmd_store(args: argparse.Namespace) -> int:
    """check: read-only, safe beside a running service; repair: needs the service stopped."""
    if args.action == "migrate":
        return cmd_store_migrate(args)
    from vmrsched.store import StoreInUseError
    from vmrsched.store_repair import check, check_state, repair

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
    damaged = False
    for name in names:
        if args.action == "check":
            report = check(stores / name)
        else:
            try:
                report = repair(stores / name)
            except StoreInUseError as exc:
                print(f"{exc}: stop the service first", file=sys.stderr)
                return 1
        damaged = damaged or report.damaged
        print("\n".join(report.lines()))
        if args.action == "repair" and report.damaged:
            print(f"  repaired: the damaged files are kept in {stores / name}/damaged-*/")
    if args.action != "check":
        return 0
    others = check_state(data_dir, args.name)
    if others:
        print(f"{data_dir}: queues, decisions, sign-in and token caches")
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


def cmd_admin(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    return 1 if cfg is None else cli_admin.run(args, cfg)


def cmd_failed(args: argparse.Namespace) -> int:
    """Read-only: safe beside a running service."""
    from datetime import UTC, datetime

    from vmrsched.outqueue import Failed, read_failed

    found: dict[str, list[Failed]]
    if args.data_dir is None:
        cfg = _load(args.config, secrets=False)
        if cfg is None:
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
    if data_dir is not None:
        queues = config.DataLayout(data_dir).queues
        found = {name: read_failed(queues / name) for name in _subdirs(queues)}
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
                f"{when}  {name}  {m.kind} {m.outcome}  meeting {m.meeting_uid}  "
                f"to {', '.join(m.recipients)}  correlation {m.correlation_id}\n    {item.reason}"
            )
    print(f"{total} failed message(s)")
    return 0


if __name__ == "__main__":  # pragma: no cover - `python -m vmrsched.cli`
    sys.exit(main())
