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
CONNECT_TIMEOUT = 3.0
TOTAL_TIMEOUT = 30.0  # the add-in's reservation waits on the owner's store, then gives up

# The routes an instance serves only for the integrations it runs (they ask its actors). The
# admin console's acts are not among them yet: its sessions are this process's, so the owner
# could not tell who signed in (docs/high-availability.md). The organizer's page is: its
# sessions are in the database, and its forms' CSRF tokens come from the instance that served
# the page, which is the one that takes the form too (both are passed on to the owner).
ROUTES = frozenset(
    {
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


class Forwarder:
    """Stands in front of the routes in ROUTES when instances share a database."""

    def __init__(self, service: Service, proofs: Proofs | None = None) -> None:
        self.service = service
        self.proofs = proofs or Proofs()
        self.counter = forwarded_counter(service.metrics.registry)
        self.session: aiohttp.ClientSession | None = None
        self._key: bytes | None = None
        self._logged: dict[str, float] = {}  # integration -> when its owner's absence was logged

    async def context(self, app: web.Application) -> AsyncIterator[None]:
        """The app's cleanup context: one client session for every request passed on (its
        own: instance to instance, never through a proxy from the environment)."""
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256),
            timeout=aiohttp.ClientTimeout(total=TOTAL_TIMEOUT, sock_connect=CONNECT_TIMEOUT),
            auto_decompress=False,
        )
        try:
            yield
        finally:
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

    async def __call__(self, request: web.Request) -> web.StreamResponse | None:
        """The owner's answer when another instance runs the request's integration; None when
        this instance serves it (it runs the integration, or no such integration exists)."""
        name = request.match_info.get("integration", "")
        proven = None
        if PROOF in request.headers:
            try:
                key = await self.key()
            except Exception as exc:  # the database did not answer: nothing is proven
                log.warning("cannot read the instances' shared key: %s", exc)
            else:
                proven = self.proofs.verify(
                    key,
                    request.method,
                    request.raw_path,
                    request.headers,
                    self.service.instance_name,
                )
            if proven is not None:
                request[FORWARDED_CLIENT] = proven
        if not self.service.runs_elsewhere(name):
            if proven is not None:
                self.count(name, "received")
            return None
        if proven is not None:  # never passed on twice
            self.count(name, "not_owner")
            response = error(
                503,
                "not_owner",
                f"this instance does not run integration {name} either; try again shortly",
            )
            response.headers["Retry-After"] = "1"
            return response
        return await self.relay(request, name)

    async def relay(self, request: web.Request, name: str) -> web.StreamResponse:
        service = self.service
        try:
            owner = await service.owner_of(name)
            key = await self.key()
        except Exception as exc:  # the database did not answer
            self._warn(name, "cannot find who runs integration %s: %s", name, exc)
            owner = None
        if owner is None:
            self.count(name, "no_owner")
            return owner_unavailable(
                service, f"no instance runs integration {name} right now; try again shortly"
            )
        instance, url = owner
        # bounded as the handler would bound it (client_max_size: 413), before anything is sent
        body = await request.read() if request.can_read_body else b""
        headers: CIMultiDict[str] = CIMultiDict(
            (k, v)
            for k, v in request.headers.items()
            if k.lower() not in NOT_ASKED and not k.lower().startswith(PREFIX)
        )
        headers.update(
            self.proofs.sign(
                key, request.method, request.raw_path, client_address(request), instance
            )
        )
        session = self.session
        assert session is not None, "the forwarder's cleanup context is not running"
        try:
            async with session.request(
                request.method,
                # as the client sent it: the proof covers these very bytes
                URL(url + request.raw_path, encoded=True),
                data=body if body else None,
                headers=headers,
                allow_redirects=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
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
                exc or type(exc).__name__,
            )
            return owner_unavailable(
                service, f"the instance that runs integration {name} does not answer right now"
            )
        if status == 503:
            service.forget_owner(name)  # it may have handed the integration on: ask again
        self.count(name, "relayed")
        return web.Response(status=status, body=data, headers=relayed)


def forwarder(service: Service) -> Forwarder | None:
    """The forwarder when this instance shares a database with others, else None."""
    return Forwarder(service) if service.shares_database else None
