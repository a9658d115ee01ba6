"""Host names, listen addresses and URLs: their shapes, and which of them stay on this machine.

The schema needs them (a server's host, port and whether it listens on loopback) as much as the
checks do (what may go over plain http, what demo mode and unverified add-in requests are
allowed on), so they sit below both.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

HOST_PORT_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?(?::\d{1,5})?$")
DOMAIN_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")


def split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected host:port, got {listen!r}")
    if not 0 <= int(port) <= 65535:
        raise ValueError(f"port {port} is outside 0-65535 (0: any free port)")
    return host.strip("[]"), int(port)


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


# The token endpoints msal can be given (it wants an authority, the token endpoint's parent, and
# reads the endpoints from the authority's OpenID Connect document): Entra ID's and AD FS's.
TOKEN_ENDPOINT_FORMS = (
    "https://<host>/<tenant>/oauth2/v2.0/token (Entra ID)",
    "https://<host>/adfs/oauth2/token (AD FS)",
)
_TOKEN_SUFFIXES = ("/oauth2/v2.0/token", "/oauth2/token")


def token_authority(token_endpoint: str) -> str | None:
    """The OAuth authority a token endpoint belongs to (Entra: …/<tenant>/oauth2/v2.0/token ->
    …/<tenant>; AD FS: …/adfs/oauth2/token -> …/adfs), or None when it has neither form: the
    service could not sign in with it, so check-config says so."""
    parts = urlsplit(token_endpoint)
    if parts.query or parts.fragment:
        return None
    for suffix in _TOKEN_SUFFIXES:
        if not parts.path.endswith(suffix):
            continue
        # the authority's path: one segment or more, none empty (`//oauth2/…` names no tenant)
        segments = parts.path[: -len(suffix)].split("/")[1:]
        if segments and all(segments):
            return token_endpoint[: -len(suffix)]
    return None


# Entra ID authorities that sign in the users of any tenant, not one organization's: `common`,
# `organizations`, `consumers` and the consumer tenant's own id (personal Microsoft accounts)
MULTI_TENANT = frozenset(
    {"common", "organizations", "consumers", "9188040d-6c67-4c5b-b112-36a304b66dad"}
)
_ENTRA_ENDPOINT = re.compile(r"(https?://[^/?#]+)/([^/?#]+)/oauth2/(?:v2\.0/)?(?:authorize|token)")


def entra_tenant(url: str) -> tuple[str, str] | None:
    """(root, tenant) of an Entra ID endpoint, https://<host>/<tenant>/oauth2/v2.0/authorize or
    …/token (v1.0's without /v2.0): the tenant as the admin wrote it, an id or a domain name.
    None for any other URL, AD FS's /adfs/oauth2/… included."""
    match = _ENTRA_ENDPOINT.fullmatch(url.partition("?")[0].rstrip("/"))
    if match is None or match.group(2).lower() == "adfs":
        return None
    return match.group(1), match.group(2)


def open_to_every_tenant(url: str) -> str | None:
    """The authority an Entra ID endpoint names when it signs in the users of any tenant
    (`common`, …), as written; None for one tenant's endpoint and for any other URL."""
    found = entra_tenant(url)
    return found[1] if found is not None and found[1].lower() in MULTI_TENANT else None
