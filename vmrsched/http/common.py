"""What every route module shares: the service key, JSON errors, the integration lookup."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from vmrsched.config import IntegrationConfig
from vmrsched.service import Service

SERVICE = web.AppKey("service", Service)


def error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def integration_or_404(request: web.Request) -> IntegrationConfig:
    name = request.match_info["integration"]
    integ = request.app[SERVICE].config.integration(name)
    if integ is None:
        raise web.HTTPNotFound(reason="unknown integration")
    return integ


def parse_time(value: object, key: str) -> datetime:
    """An ISO 8601 time with a zone offset from a JSON body, or ValueError naming the key."""
    if not isinstance(value, str):
        raise ValueError(f"{key} must be an ISO 8601 string")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"{key} is not an ISO 8601 time") from exc
    if moment.tzinfo is None:
        raise ValueError(f"{key} needs a time zone offset")
    if not 1900 <= moment.year <= 2999:  # as written; the API spec says the same
        raise ValueError(f"{key} is outside the years 1900-2999")
    try:
        moment.astimezone(UTC)
    except (OverflowError, ValueError) as exc:
        raise ValueError(f"{key} cannot be converted to UTC") from exc
    return moment


SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def page_headers(csp: str) -> dict[str, str]:
    """Headers of every HTML page we serve: a strict CSP and the usual hardening."""
    return {"Content-Security-Policy": csp, **SECURITY_HEADERS}
