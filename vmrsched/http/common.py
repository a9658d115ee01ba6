"""What every route module shares: the service key, JSON errors, the integration lookup."""

from __future__ import annotations

from aiohttp import web

from vmrsched.config import IntegrationConfig
from vmrsched.service import Service

SERVICE = web.AppKey("service", Service)


def error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


class NotFoundError(web.HTTPNotFound):
    pass


def integration_or_404(request: web.Request) -> IntegrationConfig:
    name = request.match_info["integration"]
    integ = request.app[SERVICE].config.integration(name)
    if integ is None:
        raise web.HTTPNotFound(reason="unknown integration")
    return integ
