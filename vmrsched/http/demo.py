"""Demo mode (loopback only, `[server] demo = true`, spool integrations): the preview pane's Send
button drops the simulated meeting into the spool inbox and reads the answer from the outbox,
so a newcomer sees the whole product work in a browser. Send routes as Exchange does: the room
gets the meeting only when it is one of the attendees the pane shows."""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from vmrsched.config import IntegrationConfig
from vmrsched.errors import BadRequest, Forbidden
from vmrsched.http.common import SERVICE, integration_or_404
from vmrsched.messages import invites
from vmrsched.service import drop_invite, spool_replies
from vmrsched.service.addin import parse_time

MAX_SUBJECT = 255
MAX_ATTENDEES = 100


def _attendees(raw: object) -> tuple[str, ...]:
    if not isinstance(raw, list) or len(raw) > MAX_ATTENDEES:
        raise ValueError(f"attendees must be a list of at most {MAX_ATTENDEES} addresses")
    if not all(isinstance(a, str) and 0 < len(a) <= 320 for a in raw):
        raise ValueError("attendees must be addresses")
    return tuple(a.strip() for a in raw)


def _demo_integration(request: web.Request) -> IntegrationConfig:
    service = request.app[SERVICE]
    integ = integration_or_404(request)
    if not service.config.server.demo or integ.backend != "spool":
        raise Forbidden("demo mode is off", "demo_off")
    return integ


async def send(request: web.Request) -> web.Response:
    integ = _demo_integration(request)
    service = request.app[SERVICE]
    try:
        body = await request.json()
        if not isinstance(body, dict):
            raise ValueError("body must be a JSON object")
        subject = body.get("subject", "")
        html_body = body.get("body", "")  # an end at or before the start: a 1-minute meeting
        if not isinstance(subject, str) or not isinstance(html_body, str):
            raise ValueError("subject and body must be strings")
        start, end = parse_time(body.get("start"), "start"), parse_time(body.get("end"), "end")
        attendees = _attendees(body.get("attendees", []))
    except (ValueError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(str(exc)) from exc
    room = integ.exchange.mailbox_email.lower()
    if room not in {a.lower() for a in attendees}:
        # as Exchange routes it: a meeting reaches only its attendees, so the room never sees it
        return web.json_response({"uid": None, "delivered": False}, status=202)
    options = invites.InviteOptions(
        subject=subject[:MAX_SUBJECT] or "Video meeting",
        start=start,
        duration_minutes=max(1, int((end - start).total_seconds() // 60)),
        token="",
        organizer="Demo Organizer <organizer@example.com>",
        attendees=tuple(a for a in attendees if a.lower() != room),
        html_body=html_body,
    )
    try:
        path, uid = await asyncio.to_thread(drop_invite, integ, service.config.data_dir, options)
    except ValueError as exc:
        raise BadRequest(str(exc)) from exc
    return web.json_response({"uid": uid, "queued": path.name, "delivered": True}, status=202)


async def replies(request: web.Request) -> web.Response:
    integ = _demo_integration(request)
    uid = request.query.get("uid", "")
    if not uid or len(uid) > 512:
        raise BadRequest("uid is required")
    data_dir = request.app[SERVICE].config.data_dir
    found = await asyncio.to_thread(spool_replies, integ, data_dir, uid)
    return web.json_response({"uid": uid, "replies": found})


def setup(app: web.Application) -> None:
    app.router.add_post("/api/demo/v1/{integration}/send", send)
    app.router.add_get("/api/demo/v1/{integration}/replies", replies)
