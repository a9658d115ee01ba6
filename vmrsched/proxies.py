"""One proxy rule for every call the service makes out: Exchange (EWS), Microsoft Graph, the
identity platforms (token endpoints, signing keys), Exchange's metadata documents and Pexip's
Management Node.

The rule: the standard environment variables name the proxy (HTTPS_PROXY for https URLs,
HTTP_PROXY for http ones, either case) and the hosts reached directly (NO_PROXY), read the way
requests reads them; an integration with `[integrations.advanced] disable_web_proxy = true`
reaches everything directly. requests (exchangelib, msal, Graph, Pexip) follows the environment
by itself and is told not to for such an integration (`use_rule`); aiohttp follows nothing
unless told, so each of its calls is given its proxy (`proxy_for`).
"""

from __future__ import annotations

import requests
import requests.utils


def proxy_for(url: str, direct: bool = False) -> str | None:
    """The proxy a call to `url` goes through (None: straight to the host)."""
    if direct:
        return None
    proxies = requests.utils.get_environ_proxies(url)
    chosen = requests.utils.select_proxy(url, proxies)
    return str(chosen) if chosen else None


def use_rule(session: requests.Session, direct: bool) -> requests.Session:
    """A requests session under the rule: the environment's proxies, or none at all for an
    integration that turned the proxy off (its calls then ignore HTTPS_PROXY and the rest)."""
    if direct:
        session.trust_env = False
        session.proxies.clear()
    return session


def direct_proxies(direct: bool) -> dict[str, str] | None:
    """What a requests adapter is handed for a call: an empty mapping connects directly;
    None leaves the session's own (environment) choice."""
    return {} if direct else None
