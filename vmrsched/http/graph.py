"""POST /graph/notifications/{integration}: where Microsoft Graph delivers change and lifecycle
notifications for a room's inbox. A validation request (`?validationToken=…`, when a subscription
is created or renewed) is answered with the token as text/plain at once; notifications are handed
to the service (clientState checked there) and answered 202 without waiting for anything.

With a shared database, Graph reaches whichever instance the notification URL leads to (the
load balancer's choice). One that does not run the integration answers 202 all the same and
passes the notifications on to the instance that does in the background (forwarding.py), which
checks the clientState and polls at once. Should the owner not be reached, nothing is lost: the
owner reads what changed from its delta link at every poll."""

from __future__ import annotations

import json

from aiohttp import web

from vmrsched.errors import BadRequest, NotFound
from vmrsched.http.common import SERVICE
from vmrsched.http.forwarding import FORWARDER

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
    forward = request.app.get(FORWARDER)
    if forward is not None:
        proven = await forward.proven(request)
        if service.runs_elsewhere(name):
            if proven is None:
                forward.pass_on_later(request, name, await request.read())
            else:  # never passed on twice: the owner changed meanwhile, its catch-up covers it
                forward.not_owner(name)
            return web.Response(status=202)
        if proven is not None:
            forward.count(name, "received")
    service.graph_notification(name, batch)
    return web.Response(status=202)


def setup(app: web.Application) -> None:
    app.router.add_post("/graph/notifications/{integration}", notifications)
