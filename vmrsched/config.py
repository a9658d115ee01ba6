"""TOML configuration: frozen dataclasses, defaults, and validation that reports every problem.

Admins fix configs in one pass only if they see all problems at once, each with the key path
that names it (`integrations[0].single_use.alias_prefix: …`), so loading never stops at the first
error. Field rules (ranges, lengths, choices) live in the dataclass field metadata, so the type,
default and rule of a key are written in one place.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import ipaddress
import os
import re
import struct
import tomllib
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar, Union, get_args, get_origin, get_type_hints
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from vmrsched import aliases, templating

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
ICON_SIZE = 80


def _rule(
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    max_len: int | None = None,
    min_len: int | None = None,
    choices: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    return {
        k: v
        for k, v in {
            "minimum": minimum,
            "maximum": maximum,
            "max_len": max_len,
            "min_len": min_len,
            "choices": choices,
        }.items()
        if v is not None
    }


def _f(default: Any, **rule: Any) -> Any:
    return field(default=default, metadata=_rule(**rule))


class Secret:
    """A secret's value, read from an environment variable or a file; never printed."""

    __slots__ = ("_value", "source")

    def __init__(self, value: str, source: str) -> None:
        self._value = value
        self.source = source

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret(from {self.source})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self.source)


# Keys whose value is secret: given only as `<key>_env` or `<key>_file`.
SECRET_KEYS = frozenset(
    {
        "service_account_password",
        "oauth_client_secret",
        "azure_client_secret",
        "admin_token",
        "policy_password",
        "management_password",
        "client_secret",
    }
)

_TEXT = 250


@dataclass(frozen=True)
class AdminSignInConfig:
    """OpenID Connect sign-in to /admin for the members of one group (Entra ID: the group's
    object id in the `groups` claim; AD FS: a group claim rule's value)."""

    authorization_uri: str = _f("")
    token_uri: str = _f("")
    client_id: str = _f("")
    client_secret: Secret | None = _f(None)  # none: a public client (PKCE only)
    issuer: str = _f("")  # when set, the ID token's iss must equal it
    admin_group: str = _f("")
    groups_claim: str = _f("groups", min_len=1, max_len=100)
    scope: str = _f("openid email profile", min_len=6, max_len=_TEXT)
    resource: str = _f("")  # AD FS: the relying party identifier
    tls_ca_file: str = _f("")  # CA bundle for the token endpoint (AD FS: internal CAs)

    @property
    def enabled(self) -> bool:
        return bool(self.authorization_uri or self.token_uri or self.client_id)


@dataclass(frozen=True)
class ServerConfig:
    listen: str = _f("127.0.0.1:8080")
    public_url: str = _f("")
    data_dir: str = _f("./data")
    log_format: str = _f("text", choices=("text", "json"))
    log_level: str = _f("info", choices=("debug", "info", "warning", "error"))
    demo: bool = _f(False)
    admin_token: Secret | None = _f(None)
    policy_username: str = _f("")
    policy_password: Secret | None = _f(None)
    max_body_bytes: int = _f(65536, minimum=1024, maximum=10 * 1024 * 1024)
    rate_limit_per_minute: int = _f(60, minimum=1, maximum=100000)
    # open HTTP connections at most (lowered to leave file descriptors for the mailbox side)
    max_connections: int = _f(1000, minimum=16, maximum=100000)
    # a new connection's first request must have sent its headers by then
    header_timeout_seconds: float = _f(10.0, minimum=0.5, maximum=300.0)
    keepalive_timeout_seconds: float = _f(15.0, minimum=1.0, maximum=3600.0)
    # reverse proxies (addresses or networks) whose X-Forwarded-For names the real client: the
    # admin login limits and the logs then key on the client, not on the proxy
    trusted_proxies: tuple[str, ...] = _f(())
    admin_sign_in: AdminSignInConfig = field(default_factory=AdminSignInConfig)

    @property
    def admin_enabled(self) -> bool:
        """Whether /admin is on: an admin token, an OpenID Connect sign-in, or both."""
        return self.admin_token is not None or self.admin_sign_in.enabled

    @property
    def host(self) -> str:
        return split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return split_listen(self.listen)[1]

    @property
    def on_loopback(self) -> bool:
        return is_loopback_host(self.host)

    @property
    def base_url(self) -> str:
        return self.public_url.rstrip("/") or f"http://{self.listen}"


@dataclass(frozen=True)
class ExchangeConfig:
    ews_url: str = _f("")
    authentication: str = _f("basic", choices=("basic", "ntlm", "oauth_delegated", "oauth_app"))
    service_account_username: str = _f("")
    service_account_password: Secret | None = _f(None)
    oauth_client_id: str = _f("")
    oauth_client_secret: Secret | None = _f(None)
    oauth_redirect_uri: str = _f("")
    # oauth_delegated: where the admin signs in (default: the authority's, from its OIDC document)
    oauth_authorization_endpoint: str = _f("")
    oauth_token_endpoint: str = _f("")
    oauth_scope: str = _f("")  # default: https://<EWS host>/.default (app), …/EWS.AccessAsUser.All
    tls_ca_file: str = _f("")  # CA bundle for EWS and the token endpoints (internal CAs)
    mailbox_name: str = _f("", max_len=_TEXT)
    mailbox_email: str = _f("")
    poll_interval_seconds: float = _f(10.0)


@dataclass(frozen=True)
class GraphConfig:
    """Exchange Online through Microsoft Graph: an app registration with application
    permissions, scoped to the room and the organizers (README, Exchange Online)."""

    tenant_id: str = _f("")
    client_id: str = _f("")
    client_secret: Secret | None = _f(None)
    # or a certificate: a PEM file with the private key and the certificate uploaded to the app
    # registration (readable by the service only)
    client_certificate_file: str = _f("")
    # national clouds: e.g. https://login.microsoftonline.us and https://graph.microsoft.us
    authority: str = _f("https://login.microsoftonline.com")
    graph_url: str = _f("https://graph.microsoft.com")
    tls_ca_file: str = _f("")  # CA bundle for Graph and the token endpoint (inspecting proxies)
    poll_interval_seconds: float = _f(10.0, minimum=0.01, maximum=3600.0)
    max_concurrent_requests: int = _f(4, minimum=1, maximum=4)  # Graph allows 4 per mailbox
    # this service's public https base URL as Graph reaches it: change notifications arrive at
    # <notification_url>/graph/notifications/<integration>; empty: poll the inbox
    notification_url: str = _f("")


@dataclass(frozen=True)
class SpoolConfig:
    directory: str = _f("")  # default: <data_dir>/spool/<integration name>
    poll_interval_seconds: float = _f(0.5)


@dataclass(frozen=True)
class SingleUseConfig:
    conference_name_template: str = _f(templating.TEMPLATES["conference_name_template"].default)
    conference_description_template: str = _f(
        templating.TEMPLATES["conference_description_template"].default
    )
    conference_subject_template: str = _f(
        templating.TEMPLATES["conference_subject_template"].default
    )
    alias_prefix: str = _f("vmr", min_len=1, max_len=8)
    alias_suffix_length: int = _f(6, minimum=6, maximum=15)
    alias_domain: str = _f("video.example.com", max_len=_TEXT)
    # reserved and not yet in a meeting, per add-in user (0: no cap); unused ones expire after
    # reservation_ttl_days, so without a cap one user could fill the alias space
    max_open_reservations_per_user: int = _f(50, minimum=0, maximum=100000)
    identity_provider_group: str = _f("", max_len=_TEXT)
    other_participants: str = _f(
        "disallow_all", choices=("disallow_all", "allow_if_trusted", "allow_all")
    )
    join_before_minutes: int = _f(30, minimum=0, maximum=180)
    join_after_minutes: int = _f(60, minimum=0, maximum=180)
    theme: str = _f("", max_len=_TEXT)


@dataclass(frozen=True)
class PexipConfig:
    """How the aliases handed out become rooms on Pexip Infinity (DESIGN "Pexip Infinity")."""

    # policy: nodes ask our external policy endpoint; management_api: we create conferences
    mode: str = _f("policy", choices=("policy", "management_api"))
    # the Conferencing Node (or reverse proxy) serving Pexip's web app: joining links point there
    webapp_fqdn: str = _f("", max_len=_TEXT)
    # the Management Node, e.g. https://pexmgr.example.com (management_api mode)
    management_url: str = _f("")
    management_username: str = _f("")
    management_password: Secret | None = _f(None)
    tls_ca_file: str = _f("")  # CA bundle for the Management Node (internal CAs)
    # create a conference this long before its first window opens (replication takes ~1 min)
    provision_lead_minutes: int = _f(10, minimum=2, maximum=1440)
    request_timeout_seconds: float = _f(10.0, minimum=1.0, maximum=120.0)


@dataclass(frozen=True)
class PersonalConfig:
    allow_new_users: bool = _f(False)
    authentication_provider: str = _f("azure", choices=("azure", "adfs"))
    user_oauth_authorization_uri: str = _f("")
    user_oauth_token_uri: str = _f("")
    user_oauth_client_id: str = _f("")
    adfs_resource_identifier: str = _f("")
    azure_client_secret: Secret | None = _f(None)
    tls_ca_file: str = _f("")  # CA bundle for the sign-in token endpoint (AD FS: internal CAs)
    # where a user's VMRs come from: file (directory_file, TOML) or pexip (the management API,
    # with [integrations.pexip] management_url and credentials)
    source: str = _f("file", choices=("file", "pexip"))
    directory_file: str = _f("vmrs.toml")  # relative to the config file's directory
    joining_instructions_template: str = _f(
        templating.TEMPLATES["joining_instructions_template"].default
    )
    location_template: str = _f(templating.TEMPLATES["location_template"].default)
    name_template: str = _f(templating.TEMPLATES["name_template"].default)
    description_template: str = _f(templating.TEMPLATES["description_template"].default)

    @property
    def sign_in(self) -> bool:
        """Whether the explicit sign-in (OAuth code flow with PKCE) is configured."""
        return bool(
            self.user_oauth_authorization_uri
            and self.user_oauth_token_uri
            and self.user_oauth_client_id
        )


@dataclass(frozen=True)
class AddinConfig:
    server_fqdn: str = _f("", max_len=_TEXT)
    token_validation: str = _f("exchange", choices=("exchange", "entra", "none"))
    entra_tenant_id: str = _f("")
    entra_client_id: str = _f("")
    entra_authority: str = _f("https://login.microsoftonline.com")
    # the scope the add-in API exposes in its app registration (Expose an API)
    entra_scope: str = _f("access_as_user", max_len=100)
    provider_name: str = _f("Video meeting rooms", max_len=_TEXT)
    display_name: str = _f("Video meeting", max_len=125)
    description: str = _f("Adds a video meeting room to your meeting.", max_len=_TEXT)
    group_label: str = _f("Video meeting", max_len=125)
    button_label: str = _f("Add video room", max_len=125)
    supertip_title: str = _f("Add a video meeting room", max_len=125)
    supertip_text: str = _f(
        "Books a video meeting room and adds its joining details to this meeting.", max_len=_TEXT
    )
    pane_title: str = _f("Video meeting", max_len=_TEXT)
    pane_description: str = _f(
        "Add a video meeting room to this meeting. Its joining details go into the "
        "meeting body and location.",
        max_len=_TEXT,
    )
    single_use_button_label: str = _f("Add a one-time video room", max_len=_TEXT)
    personal_button_label: str = _f("Use my personal room", max_len=_TEXT)
    sign_in_button_label: str = _f("Sign in", max_len=_TEXT)
    success_heading: str = _f("Video room added", max_len=_TEXT)
    success_message: str = _f(
        "The joining details are in the meeting body. Send the invitation to book the room.",
        max_len=_TEXT,
    )
    already_assigned_heading: str = _f("Video room already added", max_len=_TEXT)
    already_assigned_message: str = _f(
        "This meeting already has video joining details; nothing was changed.", max_len=_TEXT
    )
    unavailable_heading: str = _f("Booking service unavailable", max_len=_TEXT)
    unavailable_message: str = _f(
        "The booking service could not be reached. A reference was added to the meeting; the "
        "joining details will be sent to you shortly after you send the invitation.",
        max_len=_TEXT,
    )
    error_heading: str = _f("Something went wrong", max_len=_TEXT)
    error_inserting_single_use_message: str = _f(
        "The video room could not be added to this meeting. Please try again.", max_len=_TEXT
    )
    meeting_ends_before_start_message: str = _f(
        "This meeting ends before it starts. Correct its times, then add the video room.",
        max_len=_TEXT,
    )
    meeting_in_past_message: str = _f(
        "This meeting is in the past, so no video room was added.", max_len=_TEXT
    )
    select_personal_vmr_message: str = _f("Choose one of your rooms:", max_len=_TEXT)
    no_personal_vmr_message: str = _f("You have no personal video rooms yet.", max_len=_TEXT)
    error_getting_personal_vmrs_message: str = _f(
        "Your personal rooms could not be loaded. Please try again later.", max_len=_TEXT
    )
    error_signing_in_message: str = _f("Signing in did not work. Please try again.", max_len=_TEXT)
    error_inserting_personal_vmr_message: str = _f(
        "Your personal room could not be added to this meeting. Please try again.", max_len=_TEXT
    )
    icon: str = _f("")  # path to an 80x80 PNG; empty = the built-in icon


@dataclass(frozen=True)
class EmailConfig:
    # language and Babel (CLDR) pattern of {{start_time}}/{{end_time}}; the zone is named after
    locale: str = _f(templating.DEFAULT_LOCALE)
    time_format: str = _f(templating.TIME_FORMAT)
    single_use_joining_instructions_template: str = _f(
        templating.TEMPLATES["single_use_joining_instructions_template"].default
    )
    placeholder_instructions_text: str = _f(
        templating.TEMPLATES["placeholder_instructions_text"].default
    )
    accept_new_single_meeting_template: str = _f(
        templating.TEMPLATES["accept_new_single_meeting_template"].default
    )
    accept_edited_single_meeting_template: str = _f(
        templating.TEMPLATES["accept_edited_single_meeting_template"].default
    )
    accept_new_recurring_meeting_template: str = _f(
        templating.TEMPLATES["accept_new_recurring_meeting_template"].default
    )
    accept_edited_occurrence_template: str = _f(
        templating.TEMPLATES["accept_edited_occurrence_template"].default
    )
    accept_edited_recurring_meeting_template: str = _f(
        templating.TEMPLATES["accept_edited_recurring_meeting_template"].default
    )
    reject_invalid_alias_id_text: str = _f(
        templating.TEMPLATES["reject_invalid_alias_id_text"].default
    )
    reject_alias_conflict_template: str = _f(
        templating.TEMPLATES["reject_alias_conflict_template"].default
    )
    reject_alias_deleted_text: str = _f(templating.TEMPLATES["reject_alias_deleted_text"].default)
    alias_deleted_notice_template: str = _f(
        templating.TEMPLATES["alias_deleted_notice_template"].default
    )
    reject_recurring_series_in_past_text: str = _f(
        templating.TEMPLATES["reject_recurring_series_in_past_text"].default
    )
    reject_single_meeting_in_past_text: str = _f(
        templating.TEMPLATES["reject_single_meeting_in_past_text"].default
    )
    reject_general_error_template: str = _f(
        templating.TEMPLATES["reject_general_error_template"].default
    )


@dataclass(frozen=True)
class AdvancedConfig:
    # every call this integration makes goes direct, whatever HTTPS_PROXY says (vmrsched.proxies)
    disable_web_proxy: bool = _f(False)
    enable_addin_debug_logs: bool = _f(False)
    use_custom_addin_sources: bool = _f(False)
    office_js_url: str = _f("https://appsforoffice.microsoft.com/lib/1/hosted/office.js")
    fabric_css_url: str = _f("")
    fabric_components_css_url: str = _f("")
    additional_script_sources: tuple[str, ...] = _f(())


@dataclass(frozen=True)
class MetadataConfig:
    exchange_metadata_urls: tuple[str, ...] = _f(())


@dataclass(frozen=True)
class IntegrationConfig:
    name: str = _f("")
    description: str = _f("", max_len=_TEXT)
    backend: str = _f("spool", choices=("spool", "ews", "graph"))
    timezone: str = _f("UTC")
    reservation_ttl_days: int = _f(30, minimum=1, maximum=3650)
    # how far ahead a series is walked to find its end; beyond it a series counts as open-ended
    booking_horizon_days: int = _f(730, minimum=30, maximum=3650)
    enable_single_use_vmrs: bool = _f(True)
    enable_personal_vmrs: bool = _f(False)
    exchange: ExchangeConfig = field(default_factory=ExchangeConfig)
    spool: SpoolConfig = field(default_factory=SpoolConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    single_use: SingleUseConfig = field(default_factory=SingleUseConfig)
    personal: PersonalConfig = field(default_factory=PersonalConfig)
    pexip: PexipConfig = field(default_factory=PexipConfig)
    addin: AddinConfig = field(default_factory=AddinConfig)
    email: EmailConfig = field(default_factory=EmailConfig)
    advanced: AdvancedConfig = field(default_factory=AdvancedConfig)
    metadata: MetadataConfig = field(default_factory=MetadataConfig)

    def renderer(self) -> templating.Renderer:
        """This integration's compiled templates, in its zone, language and time format."""
        return templating.Renderer(
            self.template_sources(), self.timezone, self.email.locale, self.email.time_format
        )

    def template_sources(self) -> dict[str, str]:
        """Every template of this integration by name, as `templating.Renderer` wants them."""
        out: dict[str, str] = {}
        for group in (self.single_use, self.personal, self.email):
            for f in dataclasses.fields(group):
                if f.name in templating.TEMPLATES:
                    out[f.name] = getattr(group, f.name)
        return out

    def spool_dir(self, data_dir: Path) -> Path:
        return (
            Path(self.spool.directory) if self.spool.directory else data_dir / "spool" / self.name
        )


def store_dir(data_dir: Path, integration: str) -> Path:
    """Where an integration's store lives (the allocator's, recovery's, the offline admin's)."""
    return Path(data_dir) / "store" / integration


def queue_dir(data_dir: Path, integration: str) -> Path:
    """Where an integration's outgoing queue lives (the notifier's, the offline admin's)."""
    return Path(data_dir) / "queue" / integration


@dataclass(frozen=True)
class Config:
    server: ServerConfig
    integrations: tuple[IntegrationConfig, ...]
    path: Path | None = None
    warnings: tuple[str, ...] = ()

    @property
    def data_dir(self) -> Path:
        return Path(self.server.data_dir)

    def integration(self, name: str) -> IntegrationConfig | None:
        return self._by_name.get(name)

    @functools.cached_property
    def _by_name(self) -> dict[str, IntegrationConfig]:
        return {i.name: i for i in self.integrations}


class ConfigError(Exception):
    """Every problem found in a config file, each prefixed with its key path."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


HOST_PORT_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?(?::\d{1,5})?$")
DOMAIN_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")


def split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected host:port, got {listen!r}")
    if not 0 <= int(port) <= 65535:
        raise ValueError(f"port {port} is outside 0-65535 (0: any free port)")
    return host.strip("[]"), int(port)


# keys naming a file the service reads: relative paths are relative to the config file
PATH_KEYS = frozenset({"tls_ca_file", "client_certificate_file", "directory_file", "directory"})


class _Loader:
    def __init__(self, base_dir: Path, environ: Mapping[str, str]) -> None:
        self.problems: list[str] = []
        self.warnings: list[str] = []
        self.base_dir = base_dir
        self.environ = environ

    def error(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def secret(self, path: str, key: str, table: Mapping[str, Any]) -> Secret | None:
        env_key, file_key = f"{key}_env", f"{key}_file"
        if env_key in table and file_key in table:
            self.error(f"{path}.{key}", f"give either {env_key} or {file_key}, not both")
            return None
        if env_key in table:
            var = table[env_key]
            if not isinstance(var, str) or not var:
                self.error(f"{path}.{env_key}", "must name an environment variable")
                return None
            value = self.environ.get(var)
            if value is None:
                self.error(f"{path}.{env_key}", f"environment variable {var} is not set")
                return None
            return Secret(value, f"environment variable {var}")
        if file_key in table:
            name = table[file_key]
            if not isinstance(name, str) or not name:
                self.error(f"{path}.{file_key}", "must name a file")
                return None
            file_path = self.base_dir / name
            try:
                return Secret(file_path.read_text().strip(), f"file {name}")
            except OSError as exc:
                self.error(f"{path}.{file_key}", f"cannot read {file_path}: {exc.strerror}")
                return None
        return None

    def build(self, cls: type[Any], table: Any, path: str) -> Any:
        """Instantiate dataclass `cls` from a TOML table, recording every problem under `path`."""
        if not isinstance(table, dict):
            self.error(path, f"must be a table, got {type(table).__name__}")
            return cls()
        hints = get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        known = set(fields)
        for key in fields:
            if key in SECRET_KEYS:
                known |= {f"{key}_env", f"{key}_file"}
        values: dict[str, Any] = {}
        for key in table:
            if key in SECRET_KEYS:
                self.error(
                    f"{path}.{key}",
                    f"secrets may not be written in the file; use {key}_env or {key}_file",
                )
            elif key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.75)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self.error(f"{path}.{key}", f"unknown key{hint}")
        for name, f in fields.items():
            key_path = f"{path}.{name}"
            hint = hints[name]
            if name in SECRET_KEYS:
                if name not in table:
                    values[name] = self.secret(path, name, table)
                continue
            if name not in table:
                if name in PATH_KEYS and f.default:  # a default file, e.g. vmrs.toml
                    values[name] = self.resolve(str(f.default))
                continue
            raw = table[name]
            if isinstance(hint, type) and dataclasses.is_dataclass(hint):
                values[name] = self.build(hint, raw, key_path)
                continue
            value = self.convert(hint, raw, key_path)
            if value is not _INVALID and self.check_rule(f.metadata, value, key_path):
                values[name] = self.resolve(value) if name in PATH_KEYS else value
        return cls(**values)

    def resolve(self, value: str) -> str:
        """A file named in the config, relative to the config file's directory: read the same
        by check-config and by the service whatever directory it runs in (systemd: /)."""
        return str(self.base_dir / value) if value and not Path(value).is_absolute() else value

    def convert(self, hint: Any, raw: Any, path: str) -> Any:
        origin = get_origin(hint)
        if origin in (Union, types.UnionType):
            hint = next(a for a in get_args(hint) if a is not type(None))
            origin = get_origin(hint)
        if origin is tuple:
            if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
                self.error(path, "must be a list of strings")
                return _INVALID
            return tuple(raw)
        expected = {str: "a string", int: "an integer", bool: "true or false", float: "a number"}
        if hint is float and isinstance(raw, int) and not isinstance(raw, bool):
            return float(raw)
        if hint is int and isinstance(raw, bool):
            self.error(path, "must be an integer, got a boolean")
            return _INVALID
        if not isinstance(raw, hint):
            self.error(path, f"must be {expected.get(hint, hint)}, got {type(raw).__name__}")
            return _INVALID
        return raw

    def check_rule(self, rule: Mapping[str, Any], value: Any, path: str) -> bool:
        ok = True
        if "choices" in rule and value not in rule["choices"]:
            self.error(path, f"must be one of {', '.join(rule['choices'])}, got {value!r}")
            ok = False
        lo, hi = rule.get("minimum"), rule.get("maximum")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            self.error(path, f"must be {lo}-{hi}, got {value!r}")
            ok = False
        min_len, max_len = rule.get("min_len"), rule.get("max_len")
        if min_len is not None and max_len is not None and not min_len <= len(value) <= max_len:
            self.error(path, f"must be {min_len}-{max_len} characters, got {value!r}")
            ok = False
        elif max_len is not None and len(value) > max_len:
            self.error(path, f"must be at most {max_len} characters, got {len(value)}")
            ok = False
        return ok


_INVALID = object()


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
    if not px.management_username or px.management_password is None:
        err(
            path,
            "mode 'management_api' needs management_username and management_password_env "
            "(or management_password_file)",
        )
    if px.tls_ca_file and not (loader.base_dir / px.tls_ca_file).is_file():
        err(f"{path}.tls_ca_file", f"no such file: {px.tls_ca_file}")


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
        phone = "numeric_alias" in integ.email.single_use_joining_instructions_template
        if phone and not integ.single_use.alias_prefix.isdigit():
            loader.warnings.append(
                f"{path}.single_use.alias_prefix: {integ.single_use.alias_prefix!r} is not "
                "numeric, but the joining instructions offer phone dial-in, and the numeric "
                "alias is prefix + digits: use a numeric prefix so phones can dial it"
            )
        if integ.backend == "ews":
            _check_ews(loader, ex, f"{path}.exchange")
        if integ.backend == "graph":
            _check_graph(loader, integ.graph, f"{path}.graph")
        if "alias_uuid" not in integ.email.single_use_joining_instructions_template:
            err(
                f"{path}.email.single_use_joining_instructions_template",
                "must contain {{alias_uuid}} (the alias ID the service recognises meetings by)",
            )
    _check_identity_urls(loader, integ, path)
    if integ.enable_personal_vmrs:
        _check_personal(loader, integ, f"{path}.personal")
    _check_pexip(loader, integ.pexip, f"{path}.pexip")
    _check_pexip_rooms(loader, integ, path)
    for problem in templating.check_time_format(integ.email.locale, integ.email.time_format):
        err(f"{path}.email.{'locale' if 'locale' in problem else 'time_format'}", problem)
    for group_name in ("single_use", "personal", "email"):
        group = getattr(integ, group_name)
        for f in dataclasses.fields(group):
            if f.name in templating.TEMPLATES:
                for problem in templating.check(f.name, getattr(group, f.name)):
                    err(f"{path}.{group_name}.{f.name}", problem)
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
    adv = integ.advanced
    if adv.use_custom_addin_sources and not adv.office_js_url.startswith("https://"):
        err(f"{path}.advanced.office_js_url", "custom add-in sources must be https URLs")


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
        elif value.startswith("http://"):
            loader.warnings.append(f"{path}.{key}: plain http carries tokens unencrypted")
    if graph.tls_ca_file and not (loader.base_dir / graph.tls_ca_file).is_file():
        err(f"{path}.tls_ca_file", f"no such file: {graph.tls_ca_file}")
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
    if p.tls_ca_file and not (loader.base_dir / p.tls_ca_file).is_file():
        loader.error(f"{path}.tls_ca_file", f"no such file: {p.tls_ca_file}")
    if p.source == "file":
        directory = Path(p.directory_file)
        directory = directory if directory.is_absolute() else loader.base_dir / directory
        if not directory.is_file():
            loader.error(f"{path}.directory_file", f"no such file: {directory}")
    elif not integ.pexip.management_url or integ.pexip.management_password is None:
        loader.error(
            f"{path}.source",
            "'pexip' reads the Management Node: set [integrations.pexip] management_url, "
            "management_username and management_password_env",
        )


def _check_admin_sign_in(loader: _Loader, server: ServerConfig) -> None:
    s = server.admin_sign_in
    path = "server.admin_sign_in"
    if not s.enabled:
        return
    for key in ("authorization_uri", "token_uri", "client_id", "admin_group"):
        if not getattr(s, key):
            loader.error(f"{path}.{key}", "needed for the admin sign-in")
    for key in ("authorization_uri", "token_uri", "issuer"):
        value = getattr(s, key)
        if value and not value.startswith("https://"):
            loader.error(f"{path}.{key}", f"must be an https URL, got {value!r}")
    if "openid" not in s.scope.split():
        loader.error(f"{path}.scope", "must include openid (the ID token names the admin)")
    if s.tls_ca_file and not (loader.base_dir / s.tls_ca_file).is_file():
        loader.error(f"{path}.tls_ca_file", f"no such file: {s.tls_ca_file}")
    if not server.public_url.startswith("https://") and not _safe_on_loopback(server):
        loader.error(
            f"{path}",
            "the identity provider redirects admins back to public_url: set [server] "
            "public_url to this server's https URL",
        )


def parse(
    document: Mapping[str, Any],
    base_dir: Path = Path("."),
    environ: Mapping[str, str] | None = None,
    path: Path | None = None,
) -> Config:
    """Validate a parsed TOML document. Raises ConfigError listing every problem."""
    loader = _Loader(base_dir, os.environ if environ is None else environ)
    for key in document:
        if key not in ("server", "integrations"):
            close = difflib.get_close_matches(key, ["integrations", "server"], n=1, cutoff=0.75)
            loader.error(
                key, f"unknown key (did you mean {close[0]!r}?)" if close else "unknown key"
            )
    server = loader.build(ServerConfig, document.get("server", {}), "server")
    try:
        split_listen(server.listen)
    except ValueError as exc:
        loader.error("server.listen", str(exc))
    raw_integrations = document.get("integrations", [])
    integrations: list[IntegrationConfig] = []
    if not isinstance(raw_integrations, list) or not raw_integrations:
        loader.error("integrations", "define at least one [[integrations]] table")
        raw_integrations = []
    for index, raw in enumerate(raw_integrations):
        ipath = f"integrations[{index}]"
        integ = loader.build(IntegrationConfig, raw, ipath)
        _check_integration(loader, integ, ipath)
        integrations.append(integ)
    _check_unique(loader, integrations)
    _check_alias_spaces(loader, integrations)
    if server.demo and not _safe_on_loopback(server):
        loader.error("server.demo", "demo mode is allowed only when listening on loopback")
    if server.admin_token is not None and len(server.admin_token.reveal()) < MIN_ADMIN_TOKEN:
        loader.error(
            "server.admin_token",
            f"too short to resist guessing: use at least {MIN_ADMIN_TOKEN} random characters "
            "(e.g. `openssl rand -base64 32`)",
        )
    _check_admin_sign_in(loader, server)
    _check_policy_credentials(loader, server, integrations)
    _check_spools(loader, server, integrations)
    for index, proxy in enumerate(server.trusted_proxies):
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            loader.error(
                f"server.trusted_proxies[{index}]",
                f"must be an IP address or network (e.g. 127.0.0.1, 10.0.0.0/8), got {proxy!r}",
            )
    for index, integ in enumerate(integrations):
        if integ.addin.token_validation == "none":
            if not _safe_on_loopback(server) or not _loopback_url(server.public_url):
                loader.error(
                    f"integrations[{index}].addin.token_validation",
                    "'none' is allowed only when the server listens on loopback and public_url "
                    "(if set) is a loopback address too",
                )
            else:
                loader.warnings.append(
                    f"integrations[{index}].addin.token_validation: 'none' accepts unverified "
                    "add-in requests (loopback only; do not expose this server)"
                )
    if server.demo:
        loader.warnings.append("server.demo: demo mode is on (loopback only)")
    if loader.problems:
        raise ConfigError(loader.problems)
    return Config(server, tuple(integrations), path, tuple(loader.warnings))


MIN_ADMIN_TOKEN = 24


def is_loopback_host(host: str) -> bool:
    """Whether a host name or address names this machine only."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _loopback_url(url: str) -> bool:
    """Whether a URL (empty: none) names this machine only."""
    if not url:
        return True
    return is_loopback_host(urlsplit(url).hostname or "")


def _secure_url(url: str) -> bool:
    """https, or http to this machine only (a test or a sidecar): identity providers and the
    hosts whose keys verify tokens are never reached in the clear."""
    parts = urlsplit(url)
    return parts.scheme == "https" or (parts.scheme == "http" and _loopback_url(url))


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
            "policy_username needs a password: set policy_password_env or policy_password_file",
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


def load(path: Path | str, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate a TOML config file; relative file paths in it are relative to it."""
    file_path = Path(path)
    try:
        document = tomllib.loads(file_path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([f"{file_path}: cannot read: {exc.strerror}"]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{file_path}: not valid TOML: {exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{file_path}: not UTF-8: {exc}"]) from exc
    return parse(document, file_path.parent.absolute(), environ, file_path)


T = TypeVar("T")


class PerConfig(Generic[T]):
    """A value derived from one integration's config, rebuilt when a reload replaces the config
    object. Looked up by identity: hashing the (large, frozen) config on every request costs
    more than the work it saves."""

    def __init__(self, build: Callable[[IntegrationConfig], T]) -> None:
        self.build = build
        self._values: dict[str, tuple[IntegrationConfig, T]] = {}

    def __call__(self, integ: IntegrationConfig) -> T:
        entry = self._values.get(integ.name)
        if entry is None or entry[0] is not integ:
            entry = (integ, self.build(integ))
            self._values[integ.name] = entry
        return entry[1]
