"""`vmrsched aliases list|show|delete|resend` and `vmrsched decisions`: the admin console's acts
from a shell. While the service runs they go through its admin API (with the admin token from
the config's admin_token_env/_file), so the allocator that owns the store does them; when it is
stopped they work on the data directory itself. The data directory's lock tells which: the
service holds it for as long as it runs. `--url` sends them to a service elsewhere."""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from vmrsched.cli.common import terminal
from vmrsched.config import Config, ServerConfig
from vmrsched.errors import NotFound, ServiceError

if TYPE_CHECKING:  # imported when a command runs: `vmrsched --help` stays quick
    import requests

    from vmrsched.service import OfflineAdmin
    from vmrsched.service.admin import OfflinePort

API = "/api/admin/v1"
TIMEOUT = 60.0


class ApiAdmin:
    """The admin port (service/admin.py's `Admin`, answering at once like `OfflinePort`) served
    by the running service's admin API. Its errors come back as ServiceError with the API's code
    and message; who acted is logged by the service (the admin token and this address)."""

    def __init__(
        self,
        base_url: str,
        token: str,
        session: requests.Session | None = None,
        token_source: str = "the config",
    ) -> None:
        import requests

        self.base = base_url.rstrip("/") + API
        self.unreachable_hint = ""  # what to do when nothing answers at base
        self.token_source = token_source  # where the token came from: named when it is refused
        self.http = session or requests.Session()
        self.http.headers["Authorization"] = f"Bearer {token}"

    def _call(self, method: str, path: str, **params: Any) -> Any:
        import requests

        try:
            response = self.http.request(
                method, self.base + path, params=params or None, timeout=TIMEOUT
            )
        except requests.RequestException as exc:
            raise ServiceError(
                f"the service cannot be reached at {self.base}: {exc}{self.unreachable_hint}",
                "unreachable",
            ) from exc
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code == 401:  # a token was sent: the service does not hold it
            raise ServiceError(
                f"the service at {self.base} refused the admin token from {self.token_source}: "
                "it is not the running service's (changed in one place only?)",
                "admin_token_refused",
            )
        if response.status_code >= 400:
            error = body.get("error", {}) if isinstance(body, dict) else {}
            raise ServiceError(
                str(error.get("message") or f"the service answered {response.status_code}"),
                str(error.get("code") or "error"),
            )
        return body

    @staticmethod
    def _path(name: str, alias: str = "") -> str:
        path = f"/integrations/{quote(name, safe='')}/aliases"
        return f"{path}/{quote(alias, safe='')}" if alias else path

    def find_aliases(
        self, name: str, query: str = "", day: str = "", limit: int = 100
    ) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self._call(
            "GET", self._path(name), q=query, day=day, limit=limit
        )["aliases"]
        return found

    def delete_alias(self, name: str, alias: str, by: str) -> dict[str, Any]:
        record: dict[str, Any] = self._call("DELETE", self._path(name, alias))["alias"]
        return record

    def resend(self, name: str, alias: str, by: str) -> str:
        return str(self._call("POST", self._path(name, alias) + "/resend")["queued"])

    def decisions(self, name: str, query: str = "", limit: int = 100) -> list[dict[str, Any]]:
        path = f"/integrations/{quote(name, safe='')}/decisions"
        found: list[dict[str, Any]] = self._call("GET", path, q=query, limit=limit)["decisions"]
        return found


def local_url(server: ServerConfig) -> str:
    """The service's own listening address, as seen from this host."""
    host = server.host
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{server.port}" if ":" in host else f"http://{host}:{server.port}"


@contextlib.contextmanager
def admin_for(cfg: Config, url: str | None) -> Iterator[tuple[OfflinePort, str]]:
    """The way to the data and its name: the API when `url` is given or the service runs,
    the data directory otherwise; with the shared database always an instance's API (the
    records are not in the data directory)."""
    from vmrsched.service import OfflineAdmin
    from vmrsched.store import StoreInUseError

    shared = cfg.storage.backend == "postgresql"
    offline: OfflineAdmin | None = None
    if url is None and not shared:
        with contextlib.suppress(StoreInUseError):  # held: the service runs
            offline = OfflineAdmin(cfg)
    if offline is not None:
        with offline:
            yield offline, f"offline, on {cfg.data_dir}"
        return
    token = cfg.server.admin_token
    if token is None:
        raise ServiceError(
            "the records are in the shared database: set [server] admin_token_env (or "
            "admin_token_file) so this command can use a running instance's admin API"
            if shared
            else "the service is running: set [server] admin_token_env (or admin_token_file) "
            "so this command can use its admin API, or stop the service",
            "admin_token_required",
        )
    base = url or local_url(cfg.server)
    api = ApiAdmin(base, token.reveal(), token_source=token.source)
    if shared and url is None:
        api.unreachable_hint = (
            "; the records are in the shared database, so these commands need a running "
            "instance: start this one, or give another's address with --url"
        )
    yield api, f"through the admin API at {base}"


def _who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown user"
    return f"{user} (vmrsched CLI)"


def _pick_integration(cfg: Config, name: str | None) -> str:
    if name:
        if cfg.integration(name) is None:
            known = ", ".join(i.name for i in cfg.integrations)
            raise NotFound(f"no integration named {name!r} (configured: {known})")
        return name
    if len(cfg.integrations) == 1:
        return cfg.integrations[0].name
    known = ", ".join(i.name for i in cfg.integrations)
    raise ServiceError(f"name the integration with --integration ({known})", "bad_request")


def _next_window(view: dict[str, Any]) -> str:
    windows = view.get("windows") or []
    return str(windows[0]["start"]) if windows else "-"


def _print_alias(view: dict[str, Any]) -> None:
    for key in (
        "alias",
        "numeric_alias",
        "alias_id",
        "status",
        "reason",
        "organizer_email",
        "subject",
        "meeting_uid",
        "conference_name",
        "created",
        "expires",
        "deleted",
    ):
        if view.get(key):
            print(f"{key + ':':17} {terminal(view[key])}")
    for window in view.get("windows") or []:
        print(
            f"{'window:':17} {window['start']} - {window['end']} "
            f"(joinable {window['joinable_from']} - {window['joinable_until']})"
        )


def _exact(found: list[dict[str, Any]], alias: str) -> dict[str, Any] | None:
    wanted = alias.strip().lower()
    for view in found:
        if wanted in (str(view.get("alias", "")).lower(), str(view.get("numeric_alias", ""))):
            return view
    return None


def cmd_aliases(args: argparse.Namespace, cfg: Config) -> int:
    name = _pick_integration(cfg, args.integration)
    with admin_for(cfg, args.url) as (admin, how):
        if args.action == "list":
            found = admin.find_aliases(name, args.query or "", args.day or "", args.limit)
            if args.json:
                print(json.dumps(found, indent=2))
                return 0
            for view in found:
                print(
                    f"{terminal(view['alias']):40} {terminal(view['status']):9} "
                    f"{terminal(_next_window(view)):26} "
                    f"{terminal(view.get('organizer_email') or '-'):30} "
                    f"{terminal(view.get('subject') or '')}"
                )
            print(f"{len(found)} alias(es) in {name} ({how})", file=sys.stderr)
            return 0
        if not args.alias:
            raise ServiceError(f"aliases {args.action} needs the alias", "bad_request")
        if args.action == "show":
            shown = _exact(admin.find_aliases(name, args.alias, "", 1000), args.alias)
            if shown is None:
                raise NotFound(f"no alias {args.alias} in {name}", "unknown_alias")
            if args.json:
                print(json.dumps(shown, indent=2))
            else:
                _print_alias(shown)
                for entry in admin.decisions(name, shown["alias"], 20):
                    print(
                        f"{'decision:':17} {terminal(entry.get('time', ''))} "
                        f"{terminal(entry.get('outcome', ''))} "
                        f"({terminal(entry.get('reason', ''))}) "
                        f"correlation {terminal(entry.get('correlation_id', ''))}"
                    )
            return 0
        if args.action == "delete":
            if not args.yes:
                raise ServiceError(
                    f"deleting {args.alias} declines its meetings from now on and tells its "
                    "organizer: add --yes to go ahead",
                    "confirmation_needed",
                )
            view = admin.delete_alias(name, args.alias, _who())
            print(f"{terminal(view['alias'])} deleted ({how}); its organizer is told")
            return 0
        message_id = admin.resend(name, args.alias, _who())
        print(f"joining instructions of {terminal(args.alias)} queued as {message_id} ({how})")
        return 0


def cmd_decisions(args: argparse.Namespace, cfg: Config) -> int:
    name = _pick_integration(cfg, args.integration)
    with admin_for(cfg, args.url) as (admin, how):
        found = admin.decisions(name, args.query or "", args.limit)
    if args.json:
        print(json.dumps(found, indent=2, ensure_ascii=False))
        return 0
    for entry in found:
        shown = {key: terminal(entry.get(key) or "") for key in entry}
        alias = f" {shown['alias']}" if shown.get("alias") else ""
        print(
            f"{shown.get('time', '')}  {shown.get('outcome', '')} ({shown.get('reason', '')})"
            f"{alias}  '{shown.get('subject', '')}' from {shown.get('organizer') or '-'}  "
            f"correlation {shown.get('correlation_id', '')}"
        )
        if shown.get("detail"):
            print(f"    {shown['detail']}")
    print(f"{len(found)} decision(s) in {name} ({how})", file=sys.stderr)
    return 0


def run(args: argparse.Namespace, cfg: Config) -> int:
    """One admin command; its refusal printed with its code (exit status 1)."""
    from vmrsched.store import StoreInUseError

    try:
        result: int = args.admin_command(args, cfg)
    except ServiceError as exc:
        print(f"{terminal(exc.message)} ({terminal(exc.code)})", file=sys.stderr)
        return 1
    except StoreInUseError as exc:  # the service started between the check and the work
        print(f"{exc}: try again", file=sys.stderr)
        return 1
    return result


def _limit(text: str) -> int:
    """--limit as the admin API takes it: a whole number from 1 to 1,000."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"must be between 1 and 1000, got {value}")
    return value


def register(sub: argparse._SubParsersAction, add_config: Any) -> None:  # type: ignore[type-arg]
    def common(parser: argparse.ArgumentParser) -> None:
        add_config(parser)
        parser.add_argument("--integration", help="integration (default: the only one)")
        parser.add_argument(
            "--url", help="the admin API of a service elsewhere (default: this data directory's)"
        )
        parser.add_argument("--json", action="store_true", help="print JSON")

    aliases = sub.add_parser(
        "aliases",
        help="list, show, delete aliases or resend their joining instructions (offline when "
        "the service is stopped, through its admin API when it runs)",
    )
    aliases.add_argument(
        "action",
        choices=("list", "show", "delete", "resend"),
        help="list (searchable), show one with its decisions, delete it (--yes), or resend "
        "its joining instructions to the organizer",
    )
    aliases.add_argument("alias", nargs="?", help="the alias (show, delete, resend)")
    common(aliases)
    aliases.add_argument("--query", "-q", help="list: words in alias, organizer, subject or UID")
    aliases.add_argument("--day", help="list: meetings taking place on this day (YYYY-MM-DD, UTC)")
    aliases.add_argument("--limit", type=_limit, default=100, help="list: at most (default 100)")
    aliases.add_argument("--yes", action="store_true", help="delete: no second thoughts")
    aliases.set_defaults(admin_command=cmd_aliases)

    found = sub.add_parser(
        "decisions", help="the newest answers to meeting requests, searchable (why declined?)"
    )
    common(found)
    found.add_argument("--query", "-q", help="words in subject, organizer, reason, alias, id…")
    found.add_argument("--limit", type=_limit, default=50, help="at most (default 50)")
    found.set_defaults(admin_command=cmd_decisions)
