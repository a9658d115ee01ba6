"""Which Host headers the server answers to (DNS rebinding: a hostile page whose name resolves
to this server must not reach the add-in API, the demo or the admin pages under its own name)."""

from __future__ import annotations

from functools import lru_cache
from urllib.parse import urlsplit

from vmrsched.config import Config, is_loopback_host

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_WILDCARD = frozenset({"0.0.0.0", "::", ""})


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
