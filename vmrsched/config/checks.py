"""The checks of one integration's tables beyond each key's own rule: what its backend, its
sign-ins, Pexip and the add-in need, which URLs may carry tokens, and the files it names (a PEM
credential, the add-in's 80x80 PNG icon, the personal VMRs' directory file: `read_directory`,
which the running service reads the file with too).

They read one `IntegrationConfig` at a time; the checks that need the whole file (the server
table, integrations against each other) are in `service_checks`.
"""

from __future__ import annotations

import difflib
import re
import struct
import tomllib
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from vmrsched import templating
from vmrsched.config.addresses import (
    DOMAIN_RE,
    HOST_PORT_RE,
    TOKEN_ENDPOINT_FORMS,
    _secure_url,
    open_to_every_tenant,
    token_authority,
)
from vmrsched.config.schema import (
    ExchangeConfig,
    GraphConfig,
    IntegrationConfig,
    PersonalConfig,
    PexipConfig,
)
from vmrsched.config.tables import _Loader
from vmrsched.rules.aliases import normalise
from vmrsched.rules.meetings import is_address

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
# An alias is prefix + digits + "@" + domain and is dialled as a SIP or H.323 user part: the
# prefix holds only what such a part takes unescaped in every dialler (RFC 3261 "unreserved"
# letters, digits and . _ -), never @, spaces, : ; < > or letters outside ASCII.
ALIAS_PREFIX_RE = re.compile(r"[A-Za-z0-9._-]+")
ICON_SIZE = 80


# RFC 2606 and RFC 6761: names no deployment can own (example.com/.net/.org, and the .example,
# .test, .invalid and .localhost top-level domains)
_PLACEHOLDER_DOMAINS = ("example.com", "example.net", "example.org")
_PLACEHOLDER_TLDS = ("example", "test", "invalid", "localhost")


def placeholder_domain(domain: str) -> bool:
    """Whether a domain is one reserved for examples (a value copied from a sample config)."""
    name = domain.casefold().rstrip(".")
    return name.rsplit(".", 1)[-1] in _PLACEHOLDER_TLDS or any(
        name == d or name.endswith(f".{d}") for d in _PLACEHOLDER_DOMAINS
    )


def png_size(data: bytes) -> tuple[int, int] | None:
    """Width and height of a PNG, or None if `data` is not one."""
    if len(data) < 24 or data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def _check_pexip(loader: _Loader, px: PexipConfig, path: str) -> None:
    err = loader.error
    if px.webapp_fqdn and not HOST_PORT_RE.match(px.webapp_fqdn):
        err(
            f"{path}.webapp_fqdn",
            "must be a host name (with an optional :port), without scheme or path; "
            f"got {px.webapp_fqdn!r}",
        )
    if px.mode != "management_api":
        return
    if not px.management_url:
        err(f"{path}.management_url", "mode 'management_api' needs the Management Node's URL")
    elif not re.match(r"^https?://[^/\s]+/?$", px.management_url):
        err(
            f"{path}.management_url",
            f"must be http(s)://host[:port] without a path, got {px.management_url!r}",
        )
    elif px.management_url.startswith("http://"):
        loader.warnings.append(
            f"{path}.management_url: plain http sends the management password unencrypted"
        )
    if not px.management_username and px.management_password is None:  # half: `credentials`
        err(
            path,
            "mode 'management_api' needs management_username and management_password_env "
            "(or management_password_file)",
        )


def _check_pexip_rooms(loader: _Loader, integ: IntegrationConfig, path: str) -> None:
    """What Pexip makes of the room settings."""
    su = integ.single_use
    if su.other_participants == "allow_all" and su.identity_provider_group:
        loader.warnings.append(
            f"{path}.single_use.other_participants: Pexip lets devices that cannot use the "
            "identity provider in only as disallow_all or allow_if_trusted; 'allow_all' is "
            "sent as allow_if_trusted"
        )


def _check_integration(loader: _Loader, integ: IntegrationConfig, path: str) -> None:
    err = loader.error
    if not NAME_RE.match(integ.name):
        err(f"{path}.name", f"must match {NAME_RE.pattern}, got {integ.name!r}")
    if not (integ.enable_single_use_vmrs or integ.enable_personal_vmrs):
        err(path, "enable at least one of enable_single_use_vmrs, enable_personal_vmrs")
    try:
        ZoneInfo(integ.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        err(f"{path}.timezone", f"unknown IANA time zone {integ.timezone!r}")
    ex = integ.exchange
    fqdn = integ.addin.server_fqdn
    if fqdn and (not HOST_PORT_RE.match(fqdn)):
        err(
            f"{path}.addin.server_fqdn",
            f"must be a host name (with an optional :port), without scheme or path; got {fqdn!r}",
        )
    if integ.enable_single_use_vmrs:
        if not ex.mailbox_email:
            err(f"{path}.exchange.mailbox_email", "single-use VMRs need the equipment mailbox")
        elif not EMAIL_RE.match(ex.mailbox_email):
            err(
                f"{path}.exchange.mailbox_email",
                f"{ex.mailbox_email!r} is not an email address (name@domain)",
            )
        if not ex.mailbox_name:
            err(f"{path}.exchange.mailbox_name", "single-use VMRs need the mailbox name")
        domain = integ.single_use.alias_domain
        if not domain:
            err(f"{path}.single_use.alias_domain", "must not be empty")
        elif not DOMAIN_RE.match(domain):
            err(
                f"{path}.single_use.alias_domain",
                f"must be a domain name (letters, digits, dots, hyphens), got {domain!r}",
            )
        elif placeholder_domain(domain):
            loader.warnings.append(
                f"{path}.single_use.alias_domain: {domain!r} is a domain reserved for examples "
                f"(the default is video.example.com): every alias is dialled as "
                f"{integ.single_use.alias_prefix}…@{domain}; set your video platform's own domain"
            )
        prefix = integ.single_use.alias_prefix
        if not ALIAS_PREFIX_RE.fullmatch(prefix):
            err(
                f"{path}.single_use.alias_prefix",
                "must be ASCII letters, digits, '.', '_' or '-' only (aliases are dialled as "
                f"SIP/H.323 user parts: prefix + digits + @ + domain), got {prefix!r}",
            )
        if integ.backend == "ews":
            _check_ews(loader, ex, f"{path}.exchange")
        if integ.backend == "graph":
            _check_graph(loader, integ.graph, f"{path}.graph")
    _check_identity_urls(loader, integ, path)
    _check_ca_files(loader, integ, path)
    if integ.enable_personal_vmrs:
        _check_personal(loader, integ, f"{path}.personal")
    _check_pexip(loader, integ.pexip, f"{path}.pexip")
    _check_pexip_rooms(loader, integ, path)
    for problem in templating.check_time_format(integ.email.locale, integ.email.time_format):
        err(f"{path}.email.{'locale' if 'locale' in problem else 'time_format'}", problem)
    for name, source in integ.template_sources().items():
        for problem in templating.check(name, source):
            err(f"{path}.{templating.TEMPLATES[name].group}.{name}", problem)
    if integ.addin.icon:
        icon = loader.base_dir / integ.addin.icon
        try:
            size = png_size(icon.read_bytes())
        except OSError as exc:
            err(f"{path}.addin.icon", f"cannot read {icon}: {exc.strerror}")
        else:
            if size is None:
                err(f"{path}.addin.icon", "is not a PNG file")
            elif size != (ICON_SIZE, ICON_SIZE):
                err(f"{path}.addin.icon", f"must be 80x80 pixels, got {size[0]}x{size[1]}")
    ad = integ.addin
    if ad.token_validation == "entra" and not (ad.entra_tenant_id and ad.entra_client_id):
        err(f"{path}.addin", "token_validation 'entra' needs entra_tenant_id and entra_client_id")
    if ad.token_validation == "entra" and not re.fullmatch(r"[A-Za-z0-9._-]+", ad.entra_scope):
        err(
            f"{path}.addin.entra_scope",
            f"must be the scope name exposed by the app registration, got {ad.entra_scope!r}",
        )
    if ad.token_validation == "exchange" and not integ.metadata.exchange_metadata_urls:
        err(
            f"{path}.metadata.exchange_metadata_urls",
            "token_validation 'exchange' needs at least one trusted metadata host",
        )
    _check_addin_sources(loader, integ, path)


def _check_addin_sources(loader: _Loader, integ: IntegrationConfig, path: str) -> None:
    """The pane loads its scripts from these origins (its CSP allows exactly them): a script
    fetched over plain http can be swapped on the way and then runs with the user's mailbox
    (config/examples/full.toml: "from its own https host")."""
    adv = integ.advanced
    if adv.use_custom_addin_sources and not adv.office_js_url.startswith("https://"):
        loader.error(f"{path}.advanced.office_js_url", "custom add-in sources must be https URLs")
    for index, url in enumerate(adv.additional_script_sources):
        if not re.match(r"^https://[^/\s]+", url):
            loader.error(
                f"{path}.advanced.additional_script_sources[{index}]",
                f"must be an https URL (scripts come from their own https host), got {url!r}",
            )


def _check_ca_files(loader: _Loader, integ: IntegrationConfig, path: str) -> None:
    """Every CA bundle the integration names must exist, whether or not its backend or mode
    reads it today: a missing one turns every call of that feature into a TLS failure."""
    named = {
        "exchange": integ.exchange.tls_ca_file,
        "graph": integ.graph.tls_ca_file,
        "pexip": integ.pexip.tls_ca_file,
        "personal": integ.personal.tls_ca_file,
    }
    for table, name in named.items():
        if name and not (loader.base_dir / name).is_file():
            loader.error(f"{path}.{table}.tls_ca_file", f"no such file: {name}")


def certificate_problem(path: Path) -> str:
    """Why a PEM file cannot serve as a client certificate credential, or ""."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        return f"cannot read {path}: {exc}"
    if "PRIVATE KEY-----" not in text or "BEGIN CERTIFICATE-----" not in text:
        return f"{path} must hold the private key and the certificate (PEM)"
    return ""


def _check_graph(loader: _Loader, graph: GraphConfig, path: str) -> None:
    err = loader.error
    for key in ("tenant_id", "client_id"):
        if not getattr(graph, key):
            err(f"{path}.{key}", "the graph backend needs the app registration's " + key)
    if (graph.client_secret is None) == (not graph.client_certificate_file):
        err(
            f"{path}.client_secret_env",
            "the graph backend needs one credential: client_secret_env (or _file), or "
            "client_certificate_file",
        )
    if graph.client_certificate_file:
        problem = certificate_problem(loader.base_dir / graph.client_certificate_file)
        if problem:
            err(f"{path}.client_certificate_file", problem)
    for key in ("authority", "graph_url"):
        value = getattr(graph, key)
        if not re.match(r"^https?://[^/\s]+/?$", value):
            err(f"{path}.{key}", f"must be https://host without a path, got {value!r}")
        elif key == "authority" and not _secure_url(value):  # an identity provider: https only
            err(f"{path}.{key}", f"must be https (http only to loopback), got {value!r}")
        elif value.startswith("http://"):
            loader.warnings.append(f"{path}.{key}: plain http carries tokens unencrypted")
    if graph.notification_url:
        if not re.match(r"^https?://[^/\s]+(/[^\s]*)?$", graph.notification_url):
            err(f"{path}.notification_url", f"must be an https URL, got {graph.notification_url!r}")
        elif graph.notification_url.startswith("http://"):
            loader.warnings.append(
                f"{path}.notification_url: Microsoft Graph delivers notifications to https "
                "URLs only"
            )


def _check_ews(loader: _Loader, ex: ExchangeConfig, path: str) -> None:
    err = loader.error
    if not ex.ews_url.startswith(("https://", "http://")):
        err(f"{path}.ews_url", "the ews backend needs the EWS URL (https://…/EWS/Exchange.asmx)")
    elif ex.ews_url.startswith("http://"):
        loader.warnings.append(
            f"{path}.ews_url: plain http sends the service account's credentials unencrypted"
        )
    needs_user = ex.authentication in ("basic", "ntlm", "oauth_delegated")
    if needs_user and not ex.service_account_username:
        err(f"{path}.service_account_username", f"needed for {ex.authentication}")
    if ex.authentication in ("basic", "ntlm") and ex.service_account_password is None:
        err(
            f"{path}.service_account_password_env",
            f"{ex.authentication} needs the password (service_account_password_env or _file)",
        )
    if ex.authentication.startswith("oauth"):
        for key in ("oauth_client_id", "oauth_token_endpoint"):
            if not getattr(ex, key):
                err(f"{path}.{key}", f"needed for {ex.authentication}")
        token_endpoint = ex.oauth_token_endpoint
        if token_endpoint and not _secure_url(token_endpoint):  # an identity provider
            err(
                f"{path}.oauth_token_endpoint",
                f"must be an https URL (http only to loopback), got {token_endpoint!r}",
            )
        elif token_endpoint and token_authority(token_endpoint) is None:
            # msal signs in through the endpoint's authority, its parent: any other URL would
            # pass here and then fail every sign-in (exchange_unreachable) at run time
            err(
                f"{path}.oauth_token_endpoint",
                f"must be {' or '.join(TOKEN_ENDPOINT_FORMS)}, got {token_endpoint!r}",
            )
        if ex.oauth_client_secret is None:
            err(f"{path}.oauth_client_secret_env", f"{ex.authentication} needs the client secret")
        if ex.authentication == "oauth_delegated":
            # the authorization endpoint may be left out: msal finds it in the authority's
            # OpenID Connect document (the token endpoint's); set, the sign-in goes there
            if not ex.oauth_redirect_uri:
                err(f"{path}.oauth_redirect_uri", "needed for oauth_delegated")
            endpoint = ex.oauth_authorization_endpoint
            if endpoint and not _secure_url(endpoint):
                err(
                    f"{path}.oauth_authorization_endpoint",
                    f"must be an https URL (http only to loopback), got {endpoint!r}",
                )
            suffix = "/admin/platform/msexchangeconnector/oauth_redirect/"
            if ex.oauth_redirect_uri and not ex.oauth_redirect_uri.endswith(suffix):
                err(f"{path}.oauth_redirect_uri", f"must end with {suffix}")


def _check_personal(loader: _Loader, integ: IntegrationConfig, path: str) -> None:
    p = integ.personal
    sso = ("user_oauth_authorization_uri", "user_oauth_token_uri", "user_oauth_client_id")
    if any(getattr(p, key) for key in sso):  # an explicit sign-in: all of it or none
        for key in sso:
            if not getattr(p, key):
                loader.error(f"{path}.{key}", "the personal sign-in needs all of " + ", ".join(sso))
        if p.authentication_provider == "adfs" and not p.adfs_resource_identifier:
            loader.error(f"{path}.adfs_resource_identifier", "needed for AD FS")
        if p.authentication_provider == "azure" and p.azure_client_secret is None:
            loader.error(
                f"{path}.azure_client_secret_env", "needed for Azure (or azure_client_secret_file)"
            )
        if p.authentication_provider == "azure":
            _check_one_tenant(loader, p, path)
    if p.source == "file":
        directory = Path(p.directory_file)
        directory = directory if directory.is_absolute() else loader.base_dir / directory
        if not directory.is_file():
            loader.error(f"{path}.directory_file", f"no such file: {directory}")
            return
        try:  # shown as the admin wrote it, beside the config file
            shown = str(directory.relative_to(loader.base_dir))
        except ValueError:
            shown = str(directory)
        users, problems = read_directory(directory, shown)
        for problem in problems:
            if problem not in loader.problems:  # one file, two integrations: said once
                loader.problems.append(problem)
        if not problems:
            loader.directory_aliases[path] = [
                (alias, f"{shown}: {email}'s room {room['name']!r}")
                for email, rooms in users.items()
                for room in rooms
                for alias in room["aliases"]
            ]
    elif not integ.pexip.management_url or integ.pexip.management_password is None:
        loader.error(
            f"{path}.source",
            "'pexip' reads the Management Node: set [integrations.pexip] management_url, "
            "management_username and management_password_env",
        )


def _check_one_tenant(loader: _Loader, p: PersonalConfig, path: str) -> None:
    """The user sign-in names people by their email, and an email is only as good as the
    tenant that vouches for it: an authority open to every tenant (`common`, …) would let any
    organization's users sign in as whatever address their own admins gave them."""
    for key in ("user_oauth_authorization_uri", "user_oauth_token_uri"):
        tenant = open_to_every_tenant(getattr(p, key))
        if tenant is not None:
            loader.error(
                f"{path}.{key}",
                f"must name one tenant (its id, or a domain of it), not {tenant!r}: the "
                "organizer page and personal VMRs trust the email of your own tenant's users only",
            )


def _check_identity_urls(loader: _Loader, integ: IntegrationConfig, path: str) -> None:
    """Where tokens and ID tokens come from: the personal sign-in's endpoints (its ID token is
    trusted on the strength of the token endpoint's TLS, OpenID Connect Core 3.1.3.7), the
    Entra authority and the Exchange metadata hosts."""
    p = integ.personal
    named = [
        (f"{path}.personal.{key}", getattr(p, key))
        for key in ("user_oauth_authorization_uri", "user_oauth_token_uri")
    ]
    if integ.addin.token_validation == "entra":
        named.append((f"{path}.addin.entra_authority", integ.addin.entra_authority))
    named += [
        (f"{path}.metadata.exchange_metadata_urls[{i}]", url)
        for i, url in enumerate(integ.metadata.exchange_metadata_urls)
    ]
    for key, url in named:
        if "://" not in url and key.startswith(f"{path}.metadata."):
            continue  # a trusted host name: its metadata is fetched over https
        if url and not _secure_url(url):
            loader.error(key, f"must be an https URL (http only to loopback), got {url!r}")


# --- the personal VMRs' directory file (vmrs.toml) ----------------------------------------

SERVICE_TYPES = ("conference", "lecture", "two_stage_dialing")
ROOM_KEYS = ("name", "description", "aliases", "pin", "guest_pin", "allow_guests", "service_type")
ROOM_TEXT = 250  # Pexip: a conference's name and description, and an alias, hold 250 characters
PIN_RE = re.compile(r"[0-9]{4,20}#?")  # Pexip: 4-20 digits, which may end with #


def read_directory(path: Path, shown: str) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    """vmrs.toml (`[[users]]` with `email` and `[[users.vmrs]]` rooms) read and checked: the
    users by their email in lower case, each with their rooms (every key of ROOM_KEYS typed and
    filled in), and every problem found, each `shown: key path: what`. The users are only to
    be used when there is no problem; whatever the file holds, this never raises."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        return {}, [f"{shown}: cannot read: {exc.strerror or exc}"]
    except UnicodeDecodeError as exc:
        return {}, [f"{shown}: not UTF-8: {exc}"]
    except tomllib.TOMLDecodeError as exc:  # says the line and column
        return {}, [f"{shown}: not valid TOML: {exc}"]
    reader = _DirectoryReader(shown)
    return reader.users(document), reader.problems


def _kind(value: object) -> str:
    kinds = {bool: "a boolean", str: "a string", int: "an integer", float: "a number"}
    kinds.update({list: "a list", dict: "a table"})
    return kinds.get(type(value), "a date or time")


class _DirectoryReader:
    """One read of a directory file: every problem, and the emails and aliases seen so far
    (both must be unique in the file, ignoring case)."""

    def __init__(self, shown: str) -> None:
        self.shown = shown
        self.problems: list[str] = []
        self.emails: dict[str, str] = {}  # lower-cased email -> the user's key path
        self.aliases: dict[str, str] = {}  # normalised alias -> the room's key path

    def error(self, key: str, message: str) -> None:
        self.problems.append(f"{self.shown}: {key}: {message}")

    def unknown(self, table: dict[str, Any], known: tuple[str, ...], prefix: str) -> None:
        for key in table:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self.error(f"{prefix}{key}", f"unknown key{hint}")

    def users(self, document: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
        self.unknown(document, ("users",), "")
        listed = document.get("users", [])
        if not isinstance(listed, list):
            self.error("users", f"must be [[users]] tables, got {_kind(listed)}")
            return {}
        users: dict[str, list[dict[str, Any]]] = {}
        for index, user in enumerate(listed):
            path = f"users[{index}]"
            if not isinstance(user, dict):
                self.error(path, f"must be a table, got {_kind(user)}")
                continue
            self.unknown(user, ("email", "vmrs"), f"{path}.")
            email = self.email(user, path)
            rooms = self.rooms(user.get("vmrs", []), f"{path}.vmrs")
            if email:
                users[email] = rooms
        return users

    def email(self, user: dict[str, Any], path: str) -> str:
        key = f"{path}.email"
        if "email" not in user:
            self.error(key, "missing: every user is named by their email address")
            return ""
        value = user["email"]
        if not isinstance(value, str):
            self.error(key, f"must be a string, got {_kind(value)}")
            return ""
        address = value.strip()
        if not (is_address(address) and EMAIL_RE.match(address)):
            self.error(key, f"must be one email address (name@domain), got {value[:200]!r}")
            return ""
        folded = address.lower()
        if folded in self.emails:
            self.error(
                key,
                f"{value!r} is {self.emails[folded]}'s email too (emails are compared ignoring "
                "case)",
            )
            return ""
        self.emails[folded] = path
        return folded

    def rooms(self, listed: object, path: str) -> list[dict[str, Any]]:
        if not isinstance(listed, list):
            self.error(path, f"must be [[users.vmrs]] tables, got {_kind(listed)}")
            return []
        rooms = []
        for index, room in enumerate(listed):
            if not isinstance(room, dict):
                self.error(f"{path}[{index}]", f"must be a table, got {_kind(room)}")
                continue
            rooms.append(self.room(room, f"{path}[{index}]"))
        return rooms

    def room(self, room: dict[str, Any], path: str) -> dict[str, Any]:
        self.unknown(room, ROOM_KEYS, f"{path}.")
        aliases = self.room_aliases(room, path)
        pin, guest_pin = self.pin(room, "pin", path), self.pin(room, "guest_pin", path)
        if pin and pin == guest_pin:
            self.error(
                f"{path}.guest_pin", "must differ from pin (hosts and guests are told by their PIN)"
            )
        allow_guests = room.get("allow_guests", False)
        if not isinstance(allow_guests, bool):
            self.error(f"{path}.allow_guests", f"must be true or false, got {_kind(allow_guests)}")
        service_type = room.get("service_type", "conference")
        if service_type not in SERVICE_TYPES:
            shown = repr(service_type) if isinstance(service_type, str) else _kind(service_type)
            self.error(
                f"{path}.service_type", f"must be one of {', '.join(SERVICE_TYPES)}, got {shown}"
            )
        return {
            "name": self.text(room, "name", path) or (aliases[0] if aliases else ""),
            "description": self.text(room, "description", path),
            "aliases": tuple(aliases),
            "pin": pin,
            "guest_pin": guest_pin,
            "allow_guests": allow_guests is True,
            "service_type": service_type,
        }

    def room_aliases(self, room: dict[str, Any], path: str) -> list[str]:
        key = f"{path}.aliases"
        if "aliases" not in room:
            self.error(key, "missing: a room needs at least one alias")
            return []
        listed = room["aliases"]
        if not isinstance(listed, list):
            self.error(key, f"must be a list of strings, got {_kind(listed)}")
            return []
        if not listed:
            self.error(key, "must hold at least one alias")
        aliases = []
        for index, alias in enumerate(listed):
            at = f"{key}[{index}]"
            if not isinstance(alias, str):
                self.error(at, f"must be a string, got {_kind(alias)}")
            elif not normalise(alias):
                self.error(at, "must not be empty")
            elif len(alias) > ROOM_TEXT or not alias.isprintable():
                self.error(at, f"must be at most {ROOM_TEXT} printable characters")
            elif normalise(alias) in self.aliases:
                self.error(
                    at,
                    f"{alias!r} is an alias of {self.aliases[normalise(alias)]} too (aliases "
                    "are dialled ignoring case)",
                )
            else:
                self.aliases[normalise(alias)] = path
                aliases.append(alias.strip())
        return aliases

    def text(self, room: dict[str, Any], name: str, path: str) -> str:
        value = room.get(name, "")
        if not isinstance(value, str):
            self.error(f"{path}.{name}", f"must be a string, got {_kind(value)}")
            return ""
        if len(value) > ROOM_TEXT:
            self.error(
                f"{path}.{name}", f"must be at most {ROOM_TEXT} characters, got {len(value)}"
            )
        return value

    def pin(self, room: dict[str, Any], name: str, path: str) -> str:
        value = room.get(name, "")
        if not isinstance(value, str):
            self.error(
                f"{path}.{name}",
                f'must be a string (in quotes: {name} = "1234"), got {_kind(value)}',
            )
            return ""
        if value and not PIN_RE.fullmatch(value):
            self.error(f"{path}.{name}", "must be 4-20 digits (a final # allowed)")
        return value
