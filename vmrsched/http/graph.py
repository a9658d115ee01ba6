"""POST /graph/notifications/{integration}: where Microsoft Graph delivers change and lifecycle
notifications for a room's inbox. A validation request (`?validationToken=…`, when a subscription
is created or renewed) is answered with the token as text/plain at once; notifications are handed
to the service (clientState checked there) and answered 202 without waiting for anything."""

from __future__ import annotations

import json

from aiohttp import web

from vmrsched.errors import BadRequest, NotFound
from vmrsched.http.common import SERVICE

MAX_TOKEN = 1024


async def notifications(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    name = request.match_info["integration"]
    if not service.graph_validation(name):
        raise NotFound("no Graph integration takes notifications here", "unknown_integration")
    token = request.query.get("validationToken")
    if token is not None:
        if not token or len(token) > MAX_TOKEN:
            raise BadRequest("empty or oversized validation token")
        return web.Response(text=token, content_type="text/plain")
    try:
        body = json.loads(await request.read())
        batch = body["value"]
        if not isinstance(batch, list) or not all(isinstance(n, dict) for n in batch):
            raise TypeError("value must be a list of objects")
    except RecursionError as exc:  # JSON nested deeper than any Graph notification is
        raise BadRequest("not a Graph notification collection: nested too deep") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise BadRequest(f"not a Graph notification collection: {exc}") from exc
    service.graph_notification(name, batch)
    return web.Response(status=202)


def setup(app: web.Application) -> None:
    app.router.add_post("/graph/notifications/{integration}", notifications)
