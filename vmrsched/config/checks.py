"""The checks of one integration's tables beyond each key's own rule: what its backend, its
sign-ins, Pexip and the add-in need, which URLs may carry tokens, and the files it names (a PEM
credential, the add-in's 80x80 PNG icon).

They read one `IntegrationConfig` at a time; the checks that need the whole file (the server
table, integrations against each other) are in `service_checks`.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path
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

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
# An alias is prefix + digits + "@" + domain and is dialled as a SIP or H.323 user part: the
# prefix holds only what such a part takes unescaped in every dialler (RFC 3261 "unreserved"
# letters, digits and . _ -), never @, spaces, : ; < > or letters outside ASCII.
ALIAS_PREFIX_RE = re.compile(r"[A-Za-z0-9._-]+")
ICON_SIZE = 80


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
