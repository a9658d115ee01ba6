"""Any instance answers the add-in and the admin API (DESIGN "Beyond one machine"): with a
shared database, a request for an integration another instance runs is passed on to that
instance over HTTP, and its answer comes back unchanged (status, body, headers).

The owner does every check itself (Host and Origin, the token, quotas, rate limits), as for a
request from the client: passing a request on adds no trust, with one exception. The owner
should limit and log the real client, not the instance in between, so the forwarder says who
the client is, and the owner believes it (and counts the request as passed on at all) only with
a proof that another instance sent it: an HMAC-SHA256, under a key only the database holds
(postgres/peers.py), over the method, the path and query, the time, the client's address, a
random nonce and the instance it is meant for. A proof is good for WINDOW seconds either way of
the owner's clock and once only (a replay is refused). A request whose proof does not hold is
an ordinary client's request, its claimed address ignored.

A request passed on is never passed on again: one that reaches an instance that does not run
its integration either (the owner changed meanwhile) gets 503 `not_owner`. With no owner (a
takeover under way) or an owner that does not answer, 503 `owner_unavailable` with Retry-After
about a lease: the add-in pane then inserts its placeholder, as when the integration is down."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import math
import secrets
import time
import weakref
from collections.abc import AsyncIterator, Callable, Mapping

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry, Counter
from yarl import URL

from vmrsched.http.admin_auth import REDIRECT_PATH
from vmrsched.http.common import FORWARDED_CLIENT, client_address, error
from vmrsched.service import Service

log = logging.getLogger("vmrsched.forwarding")

PROOF = "X-Vmrsched-Forwarded-Proof"
CLIENT = "X-Vmrsched-Forwarded-For"
AT = "X-Vmrsched-Forwarded-At"
NONCE = "X-Vmrsched-Forwarded-Nonce"
PREFIX = "x-vmrsched-forwarded-"
WINDOW = 10.0  # seconds a proof is good for, either way of the receiver's clock
# proofs remembered against replay (each until its window ends: 20 s at most); past it, proofs
# are refused (their requests served as a client's) until some age out
MAX_SEEN = 200_000
PRUNE_EVERY = 4096  # accepted proofs between two sweeps of the expired ones
# A request passed on is given up (503 owner_unavailable) before the add-in pane gives up on
# its answer (10 s, docs/outlook-add-in.md), so that the pane gets the JSON that makes it insert
# its placeholder rather than an error of its own: an owner that accepts no connection (a
# machine gone, a full queue) within CONNECT_TIMEOUT, or does not answer (a paused process,
# whose kernel still accepts) within TOTAL_TIMEOUT.
CONNECT_TIMEOUT = 2.0
TOTAL_TIMEOUT = 8.0

# The routes an instance serves only for the integrations it runs (they ask its actors). Most
# name their integration in the path; the console's page names it in the query string
# (CONSOLE, `/admin?integration=X`: the first integration without one, as the page shows), and
# the service account's sign-in callback (SIGN_IN_CALLBACK) in the sign-in attempt its state
# names (kept in the database). The console's and the organizer's sessions are in the database
# and their forms' CSRF tokens are made with a key every instance holds, so the owner knows the
# admin or organizer whichever instance served the page.
CONSOLE = "/admin"
SIGN_IN_CALLBACK = REDIRECT_PATH
ROUTES = frozenset(
    {
        CONSOLE,
        "/admin/integrations/{integration}/aliases/{alias}/delete",
        "/admin/integrations/{integration}/aliases/{alias}/resend",
        "/admin/integrations/{integration}/messages/{message_id}/retry",
        "/admin/integrations/{integration}/messages/{message_id}/discard",
        SIGN_IN_CALLBACK,
        "/my/{integration}",
        "/my/{integration}/bookings/{alias}/resend",
        "/my/{integration}/bookings/{alias}/cancel",
        "/api/addin/v1/{integration}/single-use-vmrs",
        "/api/admin/v1/integrations/{integration}/messages",
        "/api/admin/v1/integrations/{integration}/messages/{message_id}",
        "/api/admin/v1/integrations/{integration}/messages/{message_id}/retry",
        "/api/admin/v1/integrations/{integration}/aliases",
        "/api/admin/v1/integrations/{integration}/aliases/{alias}",
        "/api/admin/v1/integrations/{integration}/aliases/{alias}/resend",
        "/api/self/v1/{integration}/bookings",
        "/api/self/v1/{integration}/bookings/{alias}/resend",
        "/api/self/v1/{integration}/bookings/{alias}/cancel",
    }
)
# served here when their owner cannot be reached: the console's page then shows what this
# instance knows (every integration's state, the decisions log) rather than an error
SERVED_WITHOUT_OWNER = frozenset({CONSOLE})
MAX_STATE = 512  # longer than any state we make: not looked up
BACKGROUND_TIMEOUT = 10.0  # a notification passed on in the background gives up after this

# headers of one connection (RFC 9110 7.6.1), and those the relay sets itself
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
        "content-length",
    }
)
# the owner is asked for its answer uncompressed, and the body is relayed as it came (with its
# Content-Encoding, should it have one); the relay's own server says Server and Date
NOT_ASKED = HOP_BY_HOP | {"accept-encoding"}
NOT_RELAYED = HOP_BY_HOP | {"server", "date"}
QUIET_SECONDS = 10.0  # one log line per integration at most this often while its owner is away


def proof(key: bytes, method: str, target: str, at: str, client: str, nonce: str, to: str) -> str:
    """The HMAC-SHA256 (hex) over what a passed-on request claims: each part length-prefixed,
    so no two different claims read as the same message."""
    parts = (method.upper(), target, at, client, nonce, to)
    message = "".join(f"{len(p)}:{p};" for p in parts).encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def _address(value: str) -> bool:
    if value == "unknown":  # what client_address says of a peer it could not name
        return True
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


class Proofs:
    """Making and checking proofs; remembers the ones it accepted for their WINDOW, so that a
    request passed on is served once however often it is sent."""

    def __init__(
        self,
        window: float = WINDOW,
        clock: Callable[[], float] = time.time,
        max_seen: int = MAX_SEEN,
    ) -> None:
        self.window = window
        self.clock = clock
        self.max_seen = max_seen
        self._seen: dict[str, float] = {}  # proof -> until when it is remembered
        self._accepted = 0

    def sign(self, key: bytes, method: str, target: str, client: str, to: str) -> dict[str, str]:
        """The headers that prove a request passed on to instance `to` comes from an instance."""
        at = str(int(self.clock()))
        nonce = secrets.token_hex(16)
        return {
            CLIENT: client,
            AT: at,
            NONCE: nonce,
            PROOF: proof(key, method, target, at, client, nonce, to),
        }

    def verify(
        self, key: bytes, method: str, target: str, headers: Mapping[str, str], me: str
    ) -> str | None:
        """The client's address a passed-on request names, when its proof holds for this
        instance (`me`), now, and for the first time; None otherwise."""
        sent = headers.get(PROOF, "")
        client = headers.get(CLIENT, "")
        at = headers.get(AT, "")
        nonce = headers.get(NONCE, "")
        if not sent or not nonce or len(client) > 64 or not _address(client):
            return None
        try:
            stamped = int(at)
        except ValueError:
            return None
        now = self.clock()
        if abs(now - stamped) > self.window:
            return None
        expected = proof(key, method, target, at, client, nonce, me)
        if not hmac.compare_digest(expected.encode(), sent.encode()):
            return None
        if sent in self._seen:
            return None  # a replay
        if len(self._seen) >= self.max_seen or self._accepted % PRUNE_EVERY == 0:
            self._seen = {p: until for p, until in self._seen.items() if until > now}
            if len(self._seen) >= self.max_seen:
                return None
        self._accepted += 1
        self._seen[sent] = stamped + self.window
        return client


_COUNTERS: weakref.WeakKeyDictionary[CollectorRegistry, Counter] = weakref.WeakKeyDictionary()


def forwarded_counter(registry: CollectorRegistry) -> Counter:
    """vmrsched_forwarded_requests_total{integration,outcome}, once per registry."""
    counter = _COUNTERS.get(registry)
    if counter is None:
        counter = _COUNTERS[registry] = Counter(
            "vmrsched_forwarded_requests_total",
            "Requests for an integration another instance runs: relayed (passed on, the "
            "owner's answer returned), no_owner (no instance runs it now), unreachable (its "
            "owner did not answer), received (passed on to this instance and served here), "
            "not_owner (passed on to this instance, which does not run it either)",
            ["integration", "outcome"],
            registry=registry,
        )
    return counter


def owner_unavailable(service: Service, message: str) -> web.Response:
    response = error(503, "owner_unavailable", message)
    response.headers["Retry-After"] = str(max(1, math.ceil(service.config.storage.lease_seconds)))
    return response


class Unreached(Exception):
    """No answer from the integration's owner: none runs it (`outcome` no_owner) or it did not
    answer (unreachable). Counted and logged where raised; `response` is the client's 503."""

    def __init__(self, outcome: str, response: web.Response) -> None:
        super().__init__(outcome)
        self.outcome = outcome
        self.response = response


class Forwarder:
    """Stands in front of the routes in ROUTES when instances share a database, and passes
    Microsoft Graph's notifications on to the owner (graph.py) in the background."""

    def __init__(self, service: Service, proofs: Proofs | None = None) -> None:
        self.service = service
        self.proofs = proofs or Proofs()
        self.counter = forwarded_counter(service.metrics.registry)
        self.session: aiohttp.ClientSession | None = None
        self._key: bytes | None = None
        self._logged: dict[str, float] = {}  # integration -> when its owner's absence was logged
        self._background: set[asyncio.Task[None]] = set()

    async def context(self, app: web.Application) -> AsyncIterator[None]:
        """The app's cleanup context: one client session for every request passed on (its
        own: instance to instance, never through a proxy from the environment)."""
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256),
            # to the moment: aiohttp rounds a timeout of 5 s or more up to a whole second of
            # the loop's clock (ceil_threshold), which could take 8 s to 9, close to the pane's 10
            timeout=aiohttp.ClientTimeout(
                total=TOTAL_TIMEOUT, sock_connect=CONNECT_TIMEOUT, ceil_threshold=TOTAL_TIMEOUT + 1
            ),
            auto_decompress=False,
        )
        try:
            yield
        finally:
            for task in list(self._background):
                task.cancel()
            if self._background:
                await asyncio.gather(*self._background, return_exceptions=True)
            session, self.session = self.session, None
            await session.close()

    async def key(self) -> bytes:
        if self._key is None:
            self._key = await self.service.forwarding_key()
        return self._key

    def count(self, name: str, outcome: str) -> None:
        self.counter.labels(name, outcome).inc()

    def _warn(self, name: str, message: str, *args: object) -> None:
        """Logged once per QUIET_SECONDS per integration: a dead owner is asked by every
        request until its lease runs out."""
        now = time.monotonic()
        if now - self._logged.get(name, -QUIET_SECONDS) >= QUIET_SECONDS:
            self._logged[name] = now
            log.warning(message, *args, extra={"integration": name})

    async def proven(self, request: web.Request) -> str | None:
        """The client's address when the request proves it was passed on by another instance
        (then also noted on the request, for the rate limits and the log); None otherwise."""
        if PROOF not in request.headers:
            return None
        try:
            key = await self.key()
        except Exception as exc:  # the database did not answer: nothing is proven
            log.warning("cannot read the instances' shared key: %s", exc)
            return None
        proven = self.proofs.verify(
            key, request.method, request.raw_path, request.headers, self.service.instance_name
        )
        if proven is not None:
            request[FORWARDED_CLIENT] = proven
        return proven

    async def integration_of(self, request: web.Request) -> str:
        """The integration a request in ROUTES is for: named in its path, or (the console's
        page) in its query, or (the service account's sign-in callback) by its state."""
        resource = request.match_info.route.resource
        canonical = resource.canonical if resource is not None else ""
        if canonical == CONSOLE:
            config = self.service.config
            asked = request.query.get("integration", "")
            if config.integration(asked) is None:  # the page shows the first one then
                asked = config.integrations[0].name if config.integrations else ""
            return asked
        if canonical == SIGN_IN_CALLBACK:
            state = request.query.get("state", "")
            if not state or len(state) > MAX_STATE:
                return ""
            try:
                found = await self.service.sign_ins.service_account_sign_in_of(state)
            except Exception as exc:  # the database did not answer: finished here, or not
                log.warning("cannot look up the service account's sign-in: %s", exc)
                return ""
            return found or ""
        return request.match_info.get("integration", "")

    async def __call__(self, request: web.Request) -> web.StreamResponse | None:
        """The owner's answer when another instance runs the request's integration; None when
        this instance serves it (it runs the integration, or no such integration exists, or
        the console's page whose owner cannot be reached)."""
        proven = await self.proven(request)
        name = await self.integration_of(request)
        if not self.service.runs_elsewhere(name):
            if proven is not None:
                self.count(name, "received")
            return None
        if proven is not None:  # never passed on twice
            return self.not_owner(name)
        try:
            return await self.relay(request, name)
        except Unreached as exc:
            resource = request.match_info.route.resource
            if resource is not None and resource.canonical in SERVED_WITHOUT_OWNER:
                return None
            return exc.response

    def not_owner(self, name: str) -> web.Response:
        self.count(name, "not_owner")
        response = error(
            503,
            "not_owner",
            f"this instance does not run integration {name} either; try again shortly",
        )
        response.headers["Retry-After"] = "1"
        return response

    async def relay(self, request: web.Request, name: str) -> web.Response:
        """The owner's answer to the request (Unreached without one)."""
        # bounded as the handler would bound it (client_max_size: 413), before anything is sent
        body = await request.read() if request.can_read_body else b""
        status, headers, data = await self.send(
            name, request.method, request.raw_path, request.headers, body, client_address(request)
        )
        return web.Response(status=status, body=data, headers=headers)

    async def send(
        self,
        name: str,
        method: str,
        target: str,
        asked: Mapping[str, str],
        body: bytes,
        client: str,
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> tuple[int, CIMultiDict[str], bytes]:
        """Sends a request on to the owner of `name`, proven: its status, headers and body
        (Unreached, counted and logged, when no owner answers)."""
        service = self.service
        try:
            owner = await service.owner_of(name)
            key = await self.key()
        except Exception as exc:  # the database did not answer
            self._warn(name, "cannot find who runs integration %s: %s", name, exc)
            owner = None
        if owner is None:
            self.count(name, "no_owner")
            raise Unreached(
                "no_owner",
                owner_unavailable(
                    service, f"no instance runs integration {name} right now; try again shortly"
                ),
            )
        instance, url = owner
        headers: CIMultiDict[str] = CIMultiDict(
            (k, v)
            for k, v in asked.items()
            if k.lower() not in NOT_ASKED and not k.lower().startswith(PREFIX)
        )
        headers.update(self.proofs.sign(key, method, target, client, instance))
        session = self.session
        assert session is not None, "the forwarder's cleanup context is not running"
        try:
            async with session.request(
                method,
                # as the client sent it: the proof covers these very bytes
                URL(url + target, encoded=True),
                data=body if body else None,
                headers=headers,
                allow_redirects=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
                timeout=timeout if timeout is not None else session.timeout,
            ) as answer:
                data = await answer.read()
                relayed: CIMultiDict[str] = CIMultiDict(
                    (k, v) for k, v in answer.headers.items() if k.lower() not in NOT_RELAYED
                )
                status = answer.status
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            service.forget_owner(name)
            self.count(name, "unreachable")
            self._warn(
                name,
                "instance %s (%s), which runs integration %s, did not answer: %s",
                instance,
                url,
                name,
                str(exc) or type(exc).__name__,  # a timeout says nothing of itself
            )
            raise Unreached(
                "unreachable",
                owner_unavailable(
                    service, f"the instance that runs integration {name} does not answer right now"
                ),
            ) from exc
        if status == 503:
            service.forget_owner(name)  # it may have handed the integration on: ask again
        self.count(name, "relayed")
        return status, relayed, data

    def pass_on_later(self, request: web.Request, name: str, body: bytes) -> None:
        """Sends the request on to the owner of `name` in the background, its answer unused:
        for Microsoft Graph's notifications, which must be answered at once whoever runs the
        integration. One the owner never gets is made up for by the owner's catch-up (it
        reads what changed from its delta link at every poll)."""
        method, target, client = request.method, request.raw_path, client_address(request)
        asked = CIMultiDict(request.headers)

        async def send() -> None:
            try:
                status, _, _ = await self.send(
                    name,
                    method,
                    target,
                    asked,
                    body,
                    client,
                    aiohttp.ClientTimeout(total=BACKGROUND_TIMEOUT, sock_connect=CONNECT_TIMEOUT),
                )
            except Unreached:
                return  # counted and logged
            if status >= 300:
                self._warn(name, "the owner of %s answered %d to a notification", name, status)

        task = asyncio.get_running_loop().create_task(send())
        self._background.add(task)
        task.add_done_callback(self._background.discard)


FORWARDER = web.AppKey("forwarder", Forwarder)


def forwarder(service: Service) -> Forwarder | None:
    """The forwarder when this instance shares a database with others, else None."""
    return Forwarder(service) if service.shares_database else None
