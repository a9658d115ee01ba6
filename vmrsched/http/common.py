"""What every route module shares: the service key, the one error map (domain errors and HTTP
statuses to JSON errors), the integration lookup."""

from __future__ import annotations

import functools
import ipaddress

import jinja2
from aiohttp import web

from vmrsched.config import IntegrationConfig
from vmrsched.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    QuotaExceeded,
    RateLimited,
    ServiceError,
    Unauthorized,
    Unavailable,
    UpstreamError,
)
from vmrsched.service import Service

SERVICE = web.AppKey("service", Service)
# the client's address another instance proved it passed this request on for (forwarding.py)
FORWARDED_CLIENT = web.RequestKey("forwarded_client", str)
# our own HTML pages (the pane, admin login): autoescaped, and a missing value is an error
PAGES = jinja2.Environment(
    loader=jinja2.PackageLoader("vmrsched.http", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=8)
def _networks(proxies: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(p, strict=False) for p in proxies)


def _trusted(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return False
    return any(ip in net for net in networks)


def client_address(request: web.Request) -> str:
    """Who is asking: the TCP peer, or, when that peer is one of `[server] trusted_proxies`, the
    nearest address in X-Forwarded-For that is not a trusted proxy itself (read right to left:
    the left part is whatever the client wrote). Behind the shipped nginx every peer is
    127.0.0.1; without this, one client's login attempts would lock out every admin. A request
    another instance passed on with a proof that holds (forwarding.py) names its client so."""
    if FORWARDED_CLIENT in request:
        return request[FORWARDED_CLIENT]
    peer = request.remote or "unknown"
    networks = _networks(request.app[SERVICE].config.server.trusted_proxies)
    if not networks or not _trusted(peer, networks):
        return peer
    hops = [h.strip() for h in ",".join(request.headers.getall("X-Forwarded-For", [])).split(",")]
    for hop in reversed([h for h in hops if h]):
        if not _trusted(hop, networks):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer  # not an address: the chain cannot be trusted past here
    return peer


def error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


# The one error map: each kind of domain error has one HTTP status; its code comes with it.
STATUS: dict[type[ServiceError], int] = {
    BadRequest: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    RateLimited: 429,
    QuotaExceeded: 429,
    UpstreamError: 502,
    Unavailable: 503,
}
# Errors aiohttp raises itself (routing, body limits) carry only a status: their code.
HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
    415: "unsupported_media_type",
    421: "host_not_allowed",
    429: "rate_limited",
    431: "headers_too_large",
}


def status_of(exc: ServiceError) -> int:
    for kind in type(exc).__mro__:
        status = STATUS.get(kind)
        if status is not None:
            return status
    return 500


# 401s that mean "no credentials were given": RFC 6750 §3.1 names no error for them
_NO_CREDENTIALS = frozenset(
    {"missing_token", "sign_in_required", "admin_token_required", "user_required"}
)


def service_error(exc: ServiceError) -> web.Response:
    response = error(status_of(exc), exc.code, exc.message)
    if isinstance(exc, RateLimited | Unavailable) and exc.retry_after is not None:
        response.headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    elif isinstance(exc, Unauthorized):  # RFC 9110 §15.5.2: a 401 says how to authenticate
        challenge = 'Bearer realm="vmrsched"'
        if exc.code not in _NO_CREDENTIALS:
            challenge += ', error="invalid_token"'
        response.headers["WWW-Authenticate"] = challenge
    return response


def http_error(exc: web.HTTPException) -> web.Response:
    code = HTTP_CODES.get(exc.status, "server_error" if exc.status >= 500 else "error")
    response = error(exc.status, code, exc.reason or code.replace("_", " "))
    if "Allow" in exc.headers:  # RFC 9110: a 405 lists the methods that are allowed
        response.headers["Allow"] = exc.headers["Allow"]
    return response


def origin_of(url: str) -> str:
    """The origin (scheme://host[:port]) of a URL, lower-cased as browsers send it."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}".lower()


def integration_or_404(request: web.Request) -> IntegrationConfig:
    return request.app[SERVICE].integration(request.match_info["integration"])


SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    # no address leaves for another site; "no-referrer" would also make a browser send
    # `Origin: null` with our own forms, which the origin check must refuse (another site's
    # page can send that too)
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def page_headers(csp: str) -> dict[str, str]:
    """Headers of every HTML page we serve: a strict CSP and the usual hardening."""
    return {"Content-Security-Policy": csp, **SECURITY_HEADERS}
