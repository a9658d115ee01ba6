"""aiohttp application factory: health, readiness, metrics, the add-in, demo and OpenAPI."""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from importlib import resources
from time import perf_counter
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import Histogram, generate_latest

from vmrsched.errors import ServiceError
from vmrsched.http import addin, admin, admin_api, demo, graph, organizer, personal, policy
from vmrsched.http.addin import refused
from vmrsched.http.common import PAGES, SERVICE, error, http_error, origin_of, service_error
from vmrsched.http.error_pages import for_browser
from vmrsched.http.forwarding import FORWARDER, ROUTES, Forwarder, forwarder
from vmrsched.http.hosts import allowed_hosts, hostname, own_origin
from vmrsched.logs import one_line
from vmrsched.service import Service
from vmrsched.store import StorageUnavailableError

log = logging.getLogger("vmrsched.http")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPENAPI = resources.files("vmrsched.http") / "openapi.yaml"
# what generate_latest writes: the text exposition format 0.0.4, its version named as
# Prometheus negotiates it
EXPOSITION = "text/plain; version=0.0.4; charset=utf-8"


class RouteTimers:
    """The per-route children of the request-duration histogram, looked up once per route."""

    def __init__(self, histogram: Histogram) -> None:
        self._histogram = histogram
        self._children: dict[str, Any] = {}

    def __call__(self, route: str) -> Any:
        child = self._children.get(route)
        if child is None:
            child = self._children[route] = self._histogram.labels(route)
        return child


TIMERS = web.AppKey("route_timers", RouteTimers)

__all__ = ["SERVICE", "create_app"]


def pipeline(service: Service, timers: RouteTimers, forward: Forwarder | None = None) -> Middleware:
    """The one middleware (each layer costs a coroutine per request, resumed again whenever the
    handler's await resumes): API guards (our own origin only, no CORS for anyone else; bounded
    bodies), passing a request on to the instance that runs its integration (`forward`, with a
    shared database), JSON errors, and request timing. What it needs per request is bound here
    once: the service, the route timers (each route's timer found by its route object), the
    routes passed on, and the allowed Host names of the running config (recomputed when a
    reload replaces it)."""
    hosts_of: list[Any] = [None, None]  # the config they were computed for, the names
    route_timers: dict[web.AbstractRoute, Any] = {}
    passed_on: dict[web.AbstractRoute, bool] = {}  # whether a route is one forward handles

    @web.middleware
    async def guarded(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = perf_counter()
        server = service.config.server
        try:
            path = request.path
            if path.startswith(GUARDED):
                config = service.config
                if hosts_of[0] is not config:
                    hosts_of[:] = [config, allowed_hosts(config)]
                hosts: frozenset[str] | None = hosts_of[1]
                if hosts is not None and hostname(request.host) not in hosts:
                    return refused(
                        request,
                        for_browser(
                            request, _misdirected("this server does not answer to that name")
                        ),
                    )
                api = path.startswith("/api/")
                # the API from our own pages only; a form posted to the console or the
                # organizer page from another site's page (login CSRF) neither
                if api or request.method not in SAFE_METHODS:
                    origin = request.headers.get("Origin")
                    if origin is not None and not own_origin(
                        origin, request, origin_of(server.base_url), hosts
                    ):
                        organizer.cross_origin_refused(request, origin)
                        return refused(
                            request,
                            for_browser(
                                request, _misdirected("cross-origin requests are not allowed")
                            ),
                        )
                if api:
                    length = request.content_length
                    if length is not None and length > server.max_body_bytes:
                        return refused(request, _too_large(server.max_body_bytes))
                if forward is not None:
                    route = request.match_info.route
                    handled = passed_on.get(route)
                    if handled is None:
                        resource = route.resource
                        handled = passed_on[route] = (
                            resource is not None and resource.canonical in ROUTES
                        )
                    if handled:
                        answer = await forward(request)
                        if answer is not None:
                            return answer
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            return for_browser(request, _too_large(server.max_body_bytes))
        except ServiceError as exc:
            return for_browser(request, service_error(exc))
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return for_browser(request, http_error(exc))
        except StorageUnavailableError as exc:  # the shared database: an outage, not a fault
            return for_browser(request, storage_unavailable(request, exc))
        except ConnectionResetError:  # the client hung up before its request was read
            log.info(
                "%s %s: the client went away before its request was read; nothing done",
                request.method,
                one_line(request.path[:500]),
            )
            # nobody reads it: nginx's "client closed request", for the counts and the log
            return error(499, "client_gone", "the client closed the connection")
        except Exception:  # a fault of ours: logged with an id the answer names, and JSON
            correlation_id = str(uuid.uuid4())
            log.exception(
                "%s %s failed",
                request.method,
                one_line(request.path[:500]),
                extra={"correlation_id": correlation_id},
            )
            return for_browser(
                request,
                error(
                    500,
                    "internal_error",
                    f"the server could not answer this request (correlation id {correlation_id})",
                ),
            )
        finally:
            route = request.match_info.route
            timer = route_timers.get(route)
            if timer is None:
                resource = route.resource
                if resource is None:  # unmatched: a route of its own for every request
                    timer = timers("unmatched")
                else:
                    timer = route_timers[route] = timers(resource.canonical)
            timer.observe(perf_counter() - started)

    return guarded


QUIET_SECONDS = 10.0  # one log line at most this often while the database does not answer
_quiet_until = [0.0]


def storage_unavailable(request: web.Request, exc: StorageUnavailableError) -> web.Response:
    """DESIGN's 503 for storage that is unavailable (the shared database does not answer, or
    failed the call): `storage_unavailable`, to be asked again after a third of a lease, when
    the instance looks at the database again. Logged as one line, at most every
    QUIET_SECONDS (each request of an outage would say the same)."""
    now = time.monotonic()
    if now >= _quiet_until[0]:
        _quiet_until[0] = now + QUIET_SECONDS
        log.warning(
            "%s %s: 503, storage unavailable: %s",
            request.method,
            one_line(request.path[:500]),
            " ".join(str(exc).split()),
        )
    response = error(
        503,
        "storage_unavailable",
        "the service's storage does not answer right now; try again shortly",
    )
    lease = request.app[SERVICE].config.storage.lease_seconds
    response.headers["Retry-After"] = str(max(1, math.ceil(lease / 3)))
    return response


# what a page under a hostile name must not reach (health and metrics answer to any name); the
# API's own checks (origin, body size) apply under /api/, which is one of them
GUARDED = ("/api/", "/addin/", "/admin", "/my/")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _misdirected(message: str) -> web.Response:
    """DESIGN's 421 for a Host or an Origin the config does not name."""
    return error(421, "host_not_allowed", message)


def _too_large(limit: int) -> web.Response:
    return error(413, "payload_too_large", f"request bodies are limited to {limit} bytes")


async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
    """No versions in the Server header (aiohttp names itself and Python), and no answer a
    browser may read as another type than it says (the console's pages, a Graph validation
    token echoed as text)."""
    response.headers["Server"] = "vmrsched"
    response.headers.setdefault("X-Content-Type-Options", "nosniff")


async def home(request: web.Request) -> web.Response:
    """What answers at `/`: a page pointing to the console for a browser (one that accepts
    text/html), where things are as JSON for anything else."""
    links = {
        "admin": "/admin",
        "health": "/healthz",
        "ready": "/readyz",
        "api": "/api/openapi.yaml",
    }
    if "text/html" in request.headers.get("Accept", ""):
        return web.Response(
            text=PAGES.get_template("home.html").render(links=links),
            content_type="text/html",
            headers={
                "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
                "Cache-Control": "no-store",
            },
        )
    return web.json_response({"service": "vmrsched", "links": links})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    ready, body = request.app[SERVICE].readiness()
    return web.json_response(body, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    registry = request.app[SERVICE].metrics.registry
    return web.Response(body=generate_latest(registry), headers={"Content-Type": EXPOSITION})


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=OPENAPI.read_bytes(), content_type="application/yaml")


def create_app(service: Service) -> web.Application:
    timers = RouteTimers(service.metrics.http_duration)
    forward = forwarder(service)
    app = web.Application(
        middlewares=[pipeline(service, timers, forward)],
        client_max_size=service.config.server.max_body_bytes,
    )
    app[SERVICE] = service
    if forward is not None:
        app[FORWARDER] = forward  # Graph's notifications are passed on by graph.py
        app.cleanup_ctx.append(forward.context)
    app[TIMERS] = timers
    app.router.add_get("/", home)
    app.router.add_get("/healthz", healthz)
    app.on_response_prepare.append(_server_header)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/openapi.yaml", openapi)
    addin.setup(app)
    personal.setup(app)
    organizer.setup(app)
    admin_api.setup(app)
    demo.setup(app)
    admin.setup(app)
    policy.setup(app)
    graph.setup(app)
    return app
