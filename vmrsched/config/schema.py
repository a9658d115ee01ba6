"""The configuration's shape: one frozen dataclass per TOML table, each key with its type,
default and rule (`fields._f`), and the properties the rest of the service reads off them.

The rest of the service only reads these; the rest of the package is about getting a file into
them (`tables`, `loader`) and about what their values may be together (`checks`,
`service_checks`). The template keys take their defaults from, and must match, the template
table in `vmrsched.templating` (`_template`, `_template_keys_match_the_table`).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from vmrsched import templating
from vmrsched.config.addresses import is_loopback_host, split_listen
from vmrsched.config.fields import _TEXT, Secret, _f
from vmrsched.config.layout import DataLayout

# A mailbox poll loop sleeps this long between rounds: 0 (or less) would spin a core, so the
# floor is the Graph backend's long-standing one (tests poll fakes every 0.05 s), and an hour is
# the most a mailbox may lag. Every poll interval shares the range (config/examples/full.toml).
MIN_POLL_SECONDS = 0.01
MAX_POLL_SECONDS = 3600.0


def _template(name: str) -> Any:
    """A template key: its default is the template table's (`vmrsched.templating.TEMPLATES`)."""
    return field(default=templating.TEMPLATES[name].default, metadata={"template": name})


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
    poll_interval_seconds: float = _f(10.0, minimum=MIN_POLL_SECONDS, maximum=MAX_POLL_SECONDS)


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
    poll_interval_seconds: float = _f(10.0, minimum=MIN_POLL_SECONDS, maximum=MAX_POLL_SECONDS)
    max_concurrent_requests: int = _f(4, minimum=1, maximum=4)  # Graph allows 4 per mailbox
    # this service's public https base URL as Graph reaches it: change notifications arrive at
    # <notification_url>/graph/notifications/<integration>; empty: poll the inbox
    notification_url: str = _f("")


@dataclass(frozen=True)
class SpoolConfig:
    directory: str = _f("")  # default: <data_dir>/spool/<integration name>
    poll_interval_seconds: float = _f(0.5, minimum=MIN_POLL_SECONDS, maximum=MAX_POLL_SECONDS)


@dataclass(frozen=True)
class SingleUseConfig:
    conference_name_template: str = _template("conference_name_template")
    conference_description_template: str = _template("conference_description_template")
    conference_subject_template: str = _template("conference_subject_template")
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
    joining_instructions_template: str = _template("joining_instructions_template")
    location_template: str = _template("location_template")
    name_template: str = _template("name_template")
    description_template: str = _template("description_template")

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
    # the manifest schema's ShortString: ProviderName, DisplayName and the ribbon's labels hold 125
    provider_name: str = _f("Video meeting rooms", max_len=125)
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
    sign_out_button_label: str = _f("Sign out", max_len=_TEXT)
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
    # the texts the mobile button shows in Outlook's notification bar (success, already,
    # unavailable and the error messages) are cut there at 150 characters (Outlook's limit):
    # the defaults fit
    unavailable_message: str = _f(
        "The booking service could not be reached. A reference was added; the joining details "
        "are sent to you after you send the invitation.",
        max_len=_TEXT,
    )
    error_heading: str = _f("Something went wrong", max_len=_TEXT)
    error_inserting_single_use_message: str = _f(
        "The video room could not be added to this meeting. Please try again.", max_len=_TEXT
    )
    # 429 from the add-in API: {seconds} is replaced by the wait its Retry-After asks for
    error_too_many_requests_message: str = _f(
        "Too many video rooms were asked for just now. Please try again in {seconds} seconds.",
        max_len=_TEXT,
    )
    # the user holds as many unused reservations as allowed: waiting a moment does not help
    error_quota_exceeded_message: str = _f(
        "You hold as many unused video rooms as allowed. Send or delete a meeting that has one, "
        "or wait until one expires.",
        max_len=_TEXT,
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
    # the pane, opened from the send check's button, invited the room again
    room_invited_again_message: str = _f(
        "The video room is an attendee again, so it is booked when you send the meeting.",
        max_len=_TEXT,
    )
    # the send check (Smart Alert when the organizer sends): plain text, what the pane can do
    send_check_details_removed_message: str = _f(
        "The video room's joining details were removed from this meeting, so nobody can join "
        "it. Add a video room again, or send anyway.",
        max_len=_TEXT,
    )
    send_check_room_removed_message: str = _f(
        "The video room is no longer an attendee of this meeting, so it will not be booked. "
        "Add the room back, or send anyway.",
        max_len=_TEXT,
    )
    send_check_foreign_token_message: str = _f(
        "This meeting carries the joining details of another meeting's video room. Remove them "
        "and add a room of its own, or send anyway.",
        max_len=_TEXT,
    )
    # the Smart Alert's button that opens the pane (Outlook takes at most 20 characters)
    send_check_button_label: str = _f("Add the room back", max_len=20)
    icon: str = _f("")  # path to an 80x80 PNG; empty = the built-in icon


@dataclass(frozen=True)
class EmailConfig:
    # language and Babel (CLDR) pattern of {{start_time}}/{{end_time}}; the zone is named after
    locale: str = _f(templating.DEFAULT_LOCALE)
    time_format: str = _f(templating.TIME_FORMAT)
    single_use_joining_instructions_template: str = _template(
        "single_use_joining_instructions_template"
    )
    placeholder_instructions_text: str = _template("placeholder_instructions_text")
    accept_new_single_meeting_template: str = _template("accept_new_single_meeting_template")
    accept_edited_single_meeting_template: str = _template("accept_edited_single_meeting_template")
    accept_new_recurring_meeting_template: str = _template("accept_new_recurring_meeting_template")
    accept_edited_occurrence_template: str = _template("accept_edited_occurrence_template")
    accept_edited_recurring_meeting_template: str = _template(
        "accept_edited_recurring_meeting_template"
    )
    reject_invalid_alias_id_text: str = _template("reject_invalid_alias_id_text")
    reject_alias_conflict_template: str = _template("reject_alias_conflict_template")
    reject_alias_deleted_text: str = _template("reject_alias_deleted_text")
    alias_deleted_notice_template: str = _template("alias_deleted_notice_template")
    reject_recurring_series_in_past_text: str = _template("reject_recurring_series_in_past_text")
    reject_single_meeting_in_past_text: str = _template("reject_single_meeting_in_past_text")
    reject_general_error_template: str = _template("reject_general_error_template")


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
    # [server] public_url (no trailing slash), copied in by the loader and never a key of the
    # table: what is written from one integration's config alone, a decline's
    # {{self_service_url}}, must name the page where the service answers
    public_url: str = field(default="", metadata={"derived": True})

    def renderer(self) -> templating.Renderer:
        """This integration's compiled templates, in its zone, language and time format."""
        return templating.Renderer(
            self.template_sources(), self.timezone, self.email.locale, self.email.time_format
        )

    def template_sources(self) -> dict[str, str]:
        """Every template of this integration by name, as `templating.Renderer` wants them (the
        template table names the table each one is a key of)."""
        return {
            name: getattr(getattr(self, spec.group), name)
            for name, spec in templating.TEMPLATES.items()
        }

    @property
    def graph_notifications(self) -> bool:
        """Whether Graph pushes change notifications to this integration (a Graph mailbox with
        a notification_url): only those answer Graph's validation token."""
        return self.backend == "graph" and bool(self.graph.notification_url)

    def spool_dir(self, data_dir: Path) -> Path:
        return (
            Path(self.spool.directory)
            if self.spool.directory
            else DataLayout(data_dir).spool(self.name)
        )


@dataclass(frozen=True)
class StorageConfig:
    """Where the service keeps its state. `file`: the journaled files under data_dir (the
    embedded default; one instance). `postgresql`: one database shared by two or more
    instances, each integration run by one of them at a time under a lease."""

    backend: str = _f("file", choices=("file", "postgresql"))
    # a libpq connection string ("host=db.example.com dbname=vmrsched user=vmrsched ..." or a
    # postgresql:// URL), from dsn_env or dsn_file only: it may carry the password
    dsn: Secret | None = _f(None)
    # an integration's owner renews its lease; when it stops, another instance takes the
    # integration over after at most this long
    lease_seconds: float = _f(15.0, minimum=2, maximum=300)
    # this instance's name in the leases and metrics (default: host name and process id)
    instance: str = _f("", max_len=_TEXT)
    # where the other instances reach this one, to pass it the add-in's and the admin's requests
    # for the integrations it runs: an http(s) URL, `{hostname}` standing for this machine's host
    # name (one file for every instance); default http://<[server] listen> when that names one
    # host (not 0.0.0.0 or ::) and a port
    advertise_url: str = _f("", max_len=_TEXT)

    def advertised(self, server: ServerConfig, hostname: str) -> str:
        """This instance's URL for the others (`hostname`: the machine's, for `{hostname}`);
        empty when neither advertise_url nor the listen address names one."""
        if self.advertise_url:
            return self.advertise_url.replace("{hostname}", hostname).rstrip("/")
        try:
            host, port = split_listen(server.listen)
        except ValueError:
            return ""
        if host in WILDCARD_HOSTS or port == 0:
            return ""
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


# listen addresses that name every interface, not one host the other instances could reach
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "*"})


@dataclass(frozen=True)
class Config:
    server: ServerConfig
    integrations: tuple[IntegrationConfig, ...]
    path: Path | None = None
    warnings: tuple[str, ...] = ()
    storage: StorageConfig = field(default_factory=StorageConfig)

    @property
    def data_dir(self) -> Path:
        return Path(self.server.data_dir)

    def integration(self, name: str) -> IntegrationConfig | None:
        return self._by_name.get(name)

    @functools.cached_property
    def _by_name(self) -> dict[str, IntegrationConfig]:
        return {i.name: i for i in self.integrations}


def _template_keys_match_the_table() -> None:
    """The template table (`vmrsched.templating.TEMPLATES`) lists the templates and the table
    each is a key of; the dataclasses declare exactly those keys, each with `_template`. Checked
    on import, so a template added on one side only fails at once rather than going unrendered
    or unchecked."""
    hints = get_type_hints(IntegrationConfig)
    declared: set[tuple[str, str]] = set()
    for table in dataclasses.fields(IntegrationConfig):
        cls = hints[table.name]
        if not dataclasses.is_dataclass(cls):
            continue
        for f in dataclasses.fields(cls):
            if "template" not in f.metadata:
                continue
            if f.metadata["template"] != f.name:
                raise TypeError(
                    f"{table.name}.{f.name} takes the template {f.metadata['template']}"
                )
            declared.add((f.name, table.name))
    listed = {(name, spec.group) for name, spec in templating.TEMPLATES.items()}
    if declared != listed:
        differ = ", ".join(f"{table}.{name}" for name, table in sorted(declared ^ listed))
        raise TypeError(f"template keys and vmrsched.templating.TEMPLATES differ: {differ}")


_template_keys_match_the_table()
