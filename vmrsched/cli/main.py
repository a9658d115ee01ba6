"""Command line: `vmrsched serve | check-config | invite | manifest | recover | store | failed |
aliases | decisions`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from vmrsched import config
from vmrsched.cli import admin as cli_admin
from vmrsched.cli import data
from vmrsched.cli.common import add_config, integration, load, terminal
from vmrsched.cli.serve import cmd_serve


def cmd_check_config(args: argparse.Namespace) -> int:
    path = args.path or args.config
    cfg = load(path)
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
    print(f"{path}: OK, listening on {cfg.server.listen}, data in {cfg.data_dir.absolute()}")
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
    add_config(check)
    check.set_defaults(func=cmd_check_config)
    _register_service_commands(sub)
    data.register(sub)
    cli_admin.register(sub, add_config)
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


# --- invite -----------------------------------------------------------------------------------


def cmd_invite(args: argparse.Namespace) -> int:
    from vmrsched.messages import invites
    from vmrsched.service import drop_invite

    cfg = load(args.config, secrets=False)
    integ = integration(cfg, args.integration) if cfg else None
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

    cfg = load(args.config, secrets=False)
    integ = integration(cfg, args.name) if cfg else None
    if cfg is None or integ is None:
        return 1
    base = args.base_url or cfg.server.base_url
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        print(f"manifest: {base!r} is no http(s) URL of this server", file=sys.stderr)
        return 2
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

    from vmrsched.errors import ServiceError
    from vmrsched.service import Recovered, recover_integration
    from vmrsched.store import StoreCorruptError, StoreInUseError

    cfg = load(args.config)
    integ = integration(cfg, args.name) if cfg else None
    if cfg is None or integ is None:
        return 1

    def report(entry: Recovered) -> None:
        alias = f" -> {terminal(entry.alias)}" if entry.alias else ""
        detail = f" ({terminal(entry.detail)})" if entry.detail else ""
        print(
            f"{entry.action:13} {terminal(entry.uid)}  '{terminal(entry.subject)}' by "
            f"{terminal(entry.organizer)}{alias}{detail}"
        )

    try:
        done = recover_integration(cfg, integ, datetime.now(UTC), args.dry_run, report)
    except StoreInUseError as exc:
        print(f"{exc}: stop the service first", file=sys.stderr)
        return 1
    except StoreCorruptError as exc:  # its message names the files and the tools for them
        print(f"the store is damaged, nothing was recovered: {terminal(str(exc))}", file=sys.stderr)
        return 1
    except ServiceError as exc:
        print(f"{exc.message} ({exc.code})", file=sys.stderr)
        return 1
    counts: dict[str, int] = {}
    for entry in done:
        counts[entry.action] = counts.get(entry.action, 0) + 1
    summary = ", ".join(f"{n} {action}" for action, n in sorted(counts.items())) or "nothing"
    print(f"{integ.name}: {summary}{' (dry run)' if args.dry_run else ''}")
    return 1 if counts.get("failed") else 0


def _minutes(text: str) -> int:
    """A meeting's length in whole minutes: at least one (it ends after it starts)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of minutes: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"a meeting lasts at least a minute, got {value}")
    return value


def _register_service_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    serve = sub.add_parser("serve", help="run the service")
    add_config(serve)
    serve.add_argument("--log-format", choices=("text", "json"), help="override [server]")
    serve.set_defaults(func=cmd_serve)

    invite = sub.add_parser("invite", help="drop a meeting request into a spool inbox")
    add_config(invite)
    invite.add_argument("--integration", required=True, help="integration (spool backend)")
    invite.add_argument("--subject", default="Video meeting", help="SUMMARY (default: %(default)s)")
    invite.add_argument("--start", help="ISO time, e.g. 2026-12-01T10:00+01:00 (default: in 1 h)")
    invite.add_argument(
        "--duration", type=_minutes, default=30, help="minutes, at least 1 (default 30)"
    )
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
    add_config(man)
    man.add_argument("--base-url", help="public https URL of this server (default: public_url)")
    man.set_defaults(func=cmd_manifest)

    rec = sub.add_parser("recover", help="re-bind accepted meetings missing from the store")
    rec.add_argument("name", help="integration name")
    add_config(rec)
    rec.add_argument("--dry-run", action="store_true", help="only list what would be done")
    rec.set_defaults(func=cmd_recover)


def cmd_admin(args: argparse.Namespace) -> int:
    cfg = load(args.config)
    return 1 if cfg is None else cli_admin.run(args, cfg)


if __name__ == "__main__":  # pragma: no cover - `python -m vmrsched.cli.main`
    sys.exit(main())
