"""Which Host headers the server answers to (DNS rebinding: a hostile page whose name resolves
to this server must not reach the add-in API, the demo or the admin pages under its own name)."""

from __future__ import annotations

from functools import lru_cache
from urllib.parse import urlsplit

from aiohttp import web

from vmrsched.config import Config, is_loopback_host

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_WILDCARD = frozenset({"0.0.0.0", "::", ""})
_DEFAULT_PORTS = {"http": 80, "https": 443}


def allowed_hosts(config: Config) -> frozenset[str] | None:
    """The host names this configuration is reached under, or None when it cannot know (a
    wildcard listen address with no public_url or server_fqdn: then every name is accepted)."""
    names: set[str] = set()
    server = config.server
    if server.public_url:
        names.add((urlsplit(server.public_url).hostname or "").lower())
    for integ in config.integrations:
        if integ.addin.server_fqdn:
            names.add(integ.addin.server_fqdn.lower().split(":")[0])
    host = server.host.strip("[]").lower()
    if host in _WILDCARD:
        if not names:
            return None
    else:
        names.add(host)
    if is_loopback_host(host) or host in _WILDCARD:
        names |= LOOPBACK_NAMES
    names.discard("")
    return frozenset(names)


@lru_cache(maxsize=1024)  # asked on every request, with the few names clients use
def hostname(host_header: str) -> str:
    """The name in a Host header, without port or brackets, lower case."""
    try:
        return (urlsplit(f"//{host_header}").hostname or "").lower()
    except ValueError:
        return ""


def own_origin(
    origin: str, request: web.Request, public: str, hosts: frozenset[str] | None
) -> bool:
    """Whether a request's Origin is one of this server's own pages: the public URL's origin,
    the origin the request itself names (its Host), or a name the config gives this server
    (loopback names on a loopback server) on the same scheme and port. A browser sends the
    origin of the page that made the request; any other page is cross-origin."""
    origin = origin.lower()
    if origin in (public, f"{request.scheme}://{request.host}".lower()):
        return True
    if hosts is None:
        return False
    try:
        parts = urlsplit(origin)
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
        ours = urlsplit(f"//{request.host}").port or _DEFAULT_PORTS.get(request.scheme)
    except ValueError:
        return False
    return parts.scheme == request.scheme and port == ours and (parts.hostname or "") in hosts
