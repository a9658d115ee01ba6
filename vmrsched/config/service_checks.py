"""The checks that need the whole file: the server table (the admin sign-in, the policy
endpoint's credentials) and the integrations against each other (names, mailboxes, spool
directories, alias ranges that could hand out the same alias).

`loader.parse` runs them once `checks` has looked at each integration on its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from vmrsched.config.addresses import _loopback_url, open_to_every_tenant
from vmrsched.config.schema import IntegrationConfig, ServerConfig, StorageConfig
from vmrsched.config.tables import _Loader
from vmrsched.rules import aliases


def _check_admin_sign_in(loader: _Loader, server: ServerConfig) -> None:
    s = server.admin_sign_in
    path = "server.admin_sign_in"
    # a CA bundle named is checked even with the sign-in off: it fails the day it is switched on
    if s.tls_ca_file and not (loader.base_dir / s.tls_ca_file).is_file():
        loader.error(f"{path}.tls_ca_file", f"no such file: {s.tls_ca_file}")
    if not s.enabled:
        return
    for key in ("authorization_uri", "token_uri", "client_id", "admin_group"):
        if not getattr(s, key):
            loader.error(f"{path}.{key}", "needed for the admin sign-in")
    for key in ("authorization_uri", "token_uri", "issuer"):
        value = getattr(s, key)
        if value and not value.startswith("https://"):
            loader.error(f"{path}.{key}", f"must be an https URL, got {value!r}")
    for key in ("authorization_uri", "token_uri"):
        tenant = open_to_every_tenant(getattr(s, key))
        if tenant is not None:
            loader.error(
                f"{path}.{key}",
                f"must name one tenant (its id, or a domain of it), not {tenant!r}: an app role "
                "or group of any other tenant the application is registered in would make an admin",
            )
    if "openid" not in s.scope.split():
        loader.error(f"{path}.scope", "must include openid (the ID token names the admin)")
    if not server.public_url.startswith("https://") and not _safe_on_loopback(server):
        loader.error(
            f"{path}",
            "the identity provider redirects admins back to public_url: set [server] "
            "public_url to this server's https URL",
        )


def _check_public_url(loader: _Loader, server: ServerConfig) -> None:
    """public_url is "the public https URL" (docs/production.md) users, identity providers and
    Graph come back to: sign-in redirects and session cookies over plain http can be read on
    the way, so http is only for this machine (a trial, a test)."""
    url = server.public_url
    if not url:
        return
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        loader.error("server.public_url", f"must be an https URL with a host, got {url!r}")
    elif parts.scheme == "http" and not _loopback_url(url):
        loader.error(
            "server.public_url",
            f"must be https (http only to a loopback address such as 127.0.0.1), got {url!r}",
        )


def _safe_on_loopback(server: ServerConfig) -> bool:
    try:
        return server.on_loopback
    except ValueError:
        return False


MIN_POLICY_PASSWORD = 12


def _check_policy_credentials(
    loader: _Loader, server: ServerConfig, integrations: list[IntegrationConfig]
) -> None:
    """Pexip nodes' credentials come as a pair (a username alone would let the username in),
    and off loopback they are required: the policy answer names meetings and organizers."""
    password = server.policy_password.reveal() if server.policy_password is not None else ""
    if server.policy_username and server.policy_password is None:
        loader.error(
            "server.policy_password",
            "policy_username needs a password (policy_password_env or policy_password_file)",
        )
    elif server.policy_password is not None and not server.policy_username:
        loader.error("server.policy_username", "a policy password needs its username")
    elif server.policy_password is not None and len(password) < MIN_POLICY_PASSWORD:
        loader.error(
            "server.policy_password",
            f"too short to resist guessing: use at least {MIN_POLICY_PASSWORD} characters",
        )
    served = [i.name for i in integrations if i.pexip.mode == "policy"]
    both = [i.name for i in integrations if i.pexip.mode == "management_api"]
    if both and server.policy_username:
        loader.warnings.append(
            f"integrations {', '.join(both)} create conferences on Pexip (management_api) "
            "from provision_lead_minutes before each window; Conferencing Nodes that also ask "
            "this policy endpoint refuse their aliases outside the windows "
            "(start - join_before_minutes ... end + join_after_minutes)"
        )
    try:
        exposed = not server.on_loopback
    except ValueError:  # an impossible listen address: reported on its own
        exposed = False
    if served and not server.policy_username and exposed:
        loader.error(
            "server.policy_username",
            f"listening on {server.listen} serves the policy endpoint of {', '.join(served)} "
            "(meeting names and organizer addresses) to anyone: set policy_username and "
            "policy_password_env (or _file), as in Pexip's policy profile",
        )


def _check_advertise_url(loader: _Loader, server: ServerConfig, storage: StorageConfig) -> None:
    """[storage] advertise_url: an http(s) URL of scheme, host and port only (the others append
    the request's path to it). Instances sharing a database pass one another requests, so one
    listening on every interface must say where the others reach it."""
    key = "storage.advertise_url"
    url = storage.advertise_url
    if url:
        parts = urlsplit(url.replace("{hostname}", "host"))
        try:
            parts.port  # noqa: B018 - raises ValueError on a port that is not one
            port_ok = True
        except ValueError:
            port_ok = False
        if parts.scheme not in ("http", "https") or not parts.hostname:
            loader.error(key, f"must be an http or https URL with a host, got {url!r}")
        elif not port_ok:
            loader.error(key, f"has a port that is not a number from 0 to 65535: {url!r}")
        elif parts.username or parts.password or parts.query or parts.fragment:
            loader.error(key, f"must hold no user, query or fragment, got {url!r}")
        elif parts.path not in ("", "/"):
            loader.error(
                key, f"must be the server's root (scheme, host and port only), got {url!r}"
            )
    elif storage.backend == "postgresql" and not storage.advertised(server, "host"):
        loader.error(
            key,
            f"[server] listen = {server.listen!r} names no one address the other instances "
            'can reach: set advertise_url (e.g. "http://{hostname}:8080"), the URL where '
            "they pass this instance the requests for the integrations it runs",
        )


def _check_spools(
    loader: _Loader, server: ServerConfig, integrations: list[IntegrationConfig]
) -> None:
    """A spool directory belongs to one integration (each locks it for its life)."""
    seen: dict[Path, int] = {}
    for index, integ in enumerate(integrations):
        if integ.backend != "spool":
            continue
        where = integ.spool_dir(Path(server.data_dir)).absolute()
        if where in seen:
            loader.error(
                f"integrations[{index}].spool.directory",
                f"{where} is already the spool of integrations[{seen[where]}] "
                f"({integrations[seen[where]].name}); give each integration its own",
            )
        seen.setdefault(where, index)


def _check_unique(loader: _Loader, integrations: list[IntegrationConfig]) -> None:
    names: dict[str, int] = {}
    mailboxes: dict[str, int] = {}
    for index, integ in enumerate(integrations):
        if integ.name in names:
            loader.error(
                f"integrations[{index}].name",
                f"{integ.name!r} is already used by integrations[{names[integ.name]}]",
            )
        names.setdefault(integ.name, index)
        mailbox = integ.exchange.mailbox_email.lower()
        if mailbox and mailbox in mailboxes:
            loader.error(
                f"integrations[{index}].exchange.mailbox_email",
                f"{mailbox} is already used by integrations[{mailboxes[mailbox]}]; "
                "a mailbox belongs to one integration",
            )
        mailboxes.setdefault(mailbox, index)


def alias_space(integ: IntegrationConfig) -> aliases.AliasSpace:
    """The aliases an integration's allocator can hand out."""
    su = integ.single_use
    return aliases.AliasSpace(su.alias_prefix, su.alias_suffix_length, su.alias_domain)


def _check_alias_spaces(loader: _Loader, integrations: list[IntegrationConfig]) -> None:
    """An alias and a numeric alias are unique across the service: two integrations whose
    ranges can produce the same one would accept two meetings on one room, and the policy
    answer would be one integration's. Integrations whose range already has a problem (it
    was left at its default) or that hand out no single-use aliases are not compared."""
    indexes = [
        index
        for index, integ in enumerate(integrations)
        if integ.enable_single_use_vmrs
        and not any(
            p.startswith(f"integrations[{index}].single_use.alias_") for p in loader.problems
        )
    ]
    spaces = [alias_space(integrations[index]) for index in indexes]
    met: dict[int, list[tuple[int, str]]] = {}
    for i, j, example in aliases.overlapping_spaces(spaces):
        met.setdefault(indexes[j], []).append((indexes[i], example))
    for index, earlier in sorted(met.items()):
        loader.error(f"integrations[{index}].single_use", _overlap(integrations, index, earlier))


def _check_directory_aliases(loader: _Loader, integrations: list[IntegrationConfig]) -> None:
    """A personal room's alias (from a directory file) that a single-use range can produce
    would reach two rooms once that alias is handed out: refused like two ranges that meet."""
    for path, rooms in loader.directory_aliases.items():
        for problem in range_clashes(rooms, integrations):
            loader.error(f"{path}.directory_file", problem)


def range_clashes(
    rooms: Iterable[tuple[str, str]], integrations: Sequence[IntegrationConfig]
) -> list[str]:
    """For each (alias, whose room) a single-use range can produce, what to tell the admin.
    Ranges are found by the alias's length and its first characters (a prefix is 1-8 long),
    so a large directory is checked against hundreds of integrations without comparing each
    alias with each range. The service runs it again whenever it reads a changed directory."""
    ranges: dict[tuple[int, str], IntegrationConfig] = {}
    for integ in integrations:
        if integ.enable_single_use_vmrs:
            su = integ.single_use
            key = (len(su.alias_prefix) + su.alias_suffix_length, su.alias_prefix.casefold())
            ranges.setdefault(key, integ)
    lengths = sorted({len(prefix) for _, prefix in ranges})
    problems = []
    for alias, whose in rooms:
        local = aliases.normalise(alias).split("@", 1)[0]
        for length in lengths:
            owner = ranges.get((len(local), local[:length]))
            digits = local[length:]
            if owner is None or not (digits.isascii() and digits.isdigit()):
                continue
            su = owner.single_use
            problems.append(
                f"{whose}: alias {alias!r} lies in the single-use range of integration "
                f"{owner.name!r} (alias_prefix {su.alias_prefix!r} + "
                f"{su.alias_suffix_length} digits): once a meeting is given it, one alias "
                "would reach two rooms; give the room an alias outside every single-use range"
            )
            break  # one range is enough to say so
    return problems


def _overlap(
    integrations: list[IntegrationConfig], index: int, earlier: list[tuple[int, str]]
) -> str:
    """What an admin needs to fix an overlap: both ranges, an alias both can hand out, and
    how many other integrations this one meets too."""

    def described(i: int) -> str:
        su = integrations[i].single_use
        return (
            f"integrations[{i}].single_use ({integrations[i].name!r}: alias_prefix "
            f"{su.alias_prefix!r}, alias_suffix_length {su.alias_suffix_length})"
        )

    first, example = earlier[0]
    mine, theirs = integrations[index].single_use, integrations[first].single_use
    same_domain = mine.alias_domain.casefold() == theirs.alias_domain.casefold()
    alias = f" and alias {example}@{mine.alias_domain}" if same_domain else ""
    more = [f"integrations[{i}]" for i, _ in earlier[1:]]
    others = f" (and {len(more)} more: {', '.join(more[:5])}{', …' if len(more) > 5 else ''})"
    return (
        f"{integrations[index].name!r} (alias_prefix {mine.alias_prefix!r}, alias_suffix_length "
        f"{mine.alias_suffix_length}) can hand out the same aliases as {described(first)}"
        f"{others if more else ''}, e.g. numeric alias {example!r}{alias}; aliases must be "
        "unique across the service: give each integration its own alias_prefix (with one "
        "alias_suffix_length for all, prefixes that differ other than in case never meet)"
    )
