"""GET /policy/v1/service/configuration: Pexip Conferencing Nodes ask it for every call (external
policy). Basic auth when [server] policy_username is set, compared in constant time; the answer
comes from the published alias index and never waits on an actor."""

from __future__ import annotations

import base64
import binascii
import hmac
import time
from typing import Any

import orjson
from aiohttp import web

from vmrsched.http.common import SERVICE

CHALLENGE = {"WWW-Authenticate": 'Basic realm="vmrsched policy", charset="UTF-8"'}
MAX_ALIAS = 1024  # characters of local_alias worth looking at (aliases are far shorter)


def _authorised(request: web.Request, expected: tuple[bytes, bytes] | None) -> bool:
    if expected is None:
        return True
    scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        user, sep, password = base64.b64decode(encoded.strip(), validate=True).partition(b":")
    except (binascii.Error, ValueError):
        return False
    # both compared, always: how long it takes says nothing about which one was wrong
    ok_user = hmac.compare_digest(user, expected[0])
    ok_password = hmac.compare_digest(password, expected[1])
    return bool(sep) and ok_user and ok_password


def _expected(request: web.Request) -> tuple[bytes, bytes] | None:
    server = request.app[SERVICE].config.server
    if not server.policy_username:
        return None
    secret = server.policy_password.reveal() if server.policy_password is not None else ""
    return server.policy_username.encode(), secret.encode()


def _json(
    body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )


class Counters:
    """The policy counters by result, looked up once (nodes ask on every call)."""

    def __init__(self, counter: Any) -> None:
        self._counter = counter
        self._children: dict[str, Any] = {}

    def inc(self, result: str) -> None:
        child = self._children.get(result)
        if child is None:
            child = self._children[result] = self._counter.labels(result)
        child.inc()


COUNTERS = web.AppKey("policy_counters", Counters)


async def service_configuration(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    counters = request.app[COUNTERS]
    started = time.perf_counter()
    try:
        if not _authorised(request, _expected(request)):
            counters.inc("unauthorized")
            body = {"error": {"code": "unauthorized", "message": "policy credentials required"}}
            return _json(body, 401, CHALLENGE)
        local_alias = request.query.get("local_alias", "")
        if not local_alias or len(local_alias) > MAX_ALIAS:
            # nothing we could serve: let the node decide from its own configuration
            counters.inc("bad_request")
            return _json({"status": "success", "action": "continue", "result": {}})
        result, answer = service.policy_answer(local_alias)
        counters.inc(result)
        return _json(answer)
    finally:
        service.metrics.policy_duration.observe(time.perf_counter() - started)


def setup(app: web.Application) -> None:
    app[COUNTERS] = Counters(app[SERVICE].metrics.policy_requests)
    app.router.add_get("/policy/v1/service/configuration", service_configuration)
