"""A small client of the Pexip Infinity management API (configuration resources on the Management
Node): Basic auth, tastypie lists with paging, POST/PATCH/DELETE, and Pexip's error shapes turned
into two kinds of failure: the node is unreachable or busy (retry later, whole integration) or it
refused one request (a 4xx with field errors: that conference only). An answer that is not the
JSON Pexip documents (a proxy's or load balancer's HTML page with status 200, a body cut off, an
envelope or object of another shape) is the first kind: whatever stands between us and the node
is not answering as the node would, so nothing in it is trusted or acted on. Every server the
client reaches is checked against the configured CA file, whatever REQUESTS_CA_BUNDLE or
CURL_CA_BUNDLE say. Synchronous, for the provisioner's actor thread and the personal directory's
lookups; a lookup gives its calls one `Deadline` (`watch_deadlines`), which ends a call in the
middle of a read when it passes: a node that trickles its answer a byte at a time never trips
the per-read timeout."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from vmrsched import retry_after as waits
from vmrsched.config import PexipConfig

if TYPE_CHECKING:
    from urllib3._base_connection import BaseHTTPConnection

log = logging.getLogger("vmrsched.pexip")
API = "/api/admin/configuration/v1/"
PAGE = 500  # objects per list page (Pexip's default is 20)


class PexipUnavailable(Exception):
    """The Management Node did not answer usefully (connection, timeout, 5xx, 401/403): try again
    later. `retry_after` when it said how long to wait."""

    def __init__(
        self,
        message: str,
        retry_after: float | None = None,
        status: int | None = None,
        answer: str = "",
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.status = status  # the HTTP status it answered, if it answered
        self.answer = answer  # what it said with it (`_words`)


class PexipRefused(Exception):
    """The Management Node refused one request (400/404/409): `fields` holds its per-field
    errors (e.g. {"name": ["Conference with this Name already exists."]})."""

    def __init__(
        self, message: str, status: int, fields: dict[str, Any] | None = None, answer: str = ""
    ) -> None:
        super().__init__(message)
        self.status = status
        self.fields = fields or {}
        self.answer = answer  # what it said (`_words`)

    def about(self, field: str) -> bool:
        return field in self.fields


class ManagementClient:
    def __init__(
        self,
        settings: PexipConfig,
        password: str,
        session: requests.Session | None = None,
        on_request: Any = None,
    ) -> None:
        self.base = settings.management_url.rstrip("/") + API
        self.timeout = settings.request_timeout_seconds
        self.session = session or requests.Session()
        self.session.auth = (settings.management_username, password)
        self.session.headers["Accept"] = "application/json"
        # given with every request, not set on the session: requests lets REQUESTS_CA_BUNDLE and
        # CURL_CA_BUNDLE override `Session.verify` (its environment merge runs after it), and
        # an internal CA configured for Pexip must hold whatever the environment names for the
        # rest of the host; the environment's proxies still apply (the session trusts it)
        self.verify: str | None = str(settings.tls_ca_file) if settings.tls_ca_file else None
        self.on_request = on_request  # (operation, result) -> None, for the metrics

    def close(self) -> None:
        self.session.close()

    # --- the verbs -------------------------------------------------------------------------

    def list(
        self, resource: str, deadline: Deadline | None = None, **filters: str
    ) -> Iterator[dict[str, Any]]:
        """Every object of a resource, page by page (all of them by `deadline`). Pexip ignores
        filters it does not know, so callers check what they get rather than trust the
        filter."""
        url: str | None = urljoin(self.base, f"{resource}/")
        params: dict[str, Any] | None = {**filters, "limit": PAGE, "offset": 0}
        while url is not None:
            response = self._call("GET", url, f"list_{resource}", deadline, params=params)
            objects, following = _page(response, f"the {resource} list")
            yield from objects
            url = urljoin(self.base, following) if following else None
            params = None  # `next` carries the query

    def create(
        self, resource: str, fields: dict[str, Any], deadline: Deadline | None = None
    ) -> str:
        """POST; the new object's URI path (from Location, as Pexip answers 201)."""
        url = urljoin(self.base, f"{resource}/")
        response = self._call("POST", url, f"create_{resource}", deadline, json=fields)
        location = response.headers.get("Location", "")
        if not location:
            raise PexipUnavailable(f"created a {resource} but got no Location")
        return urlsplit(location).path

    def update(self, uri: str, fields: dict[str, Any]) -> None:
        self._call("PATCH", self._absolute(uri), "update", json=fields)

    def delete(self, uri: str) -> None:
        try:
            self._call("DELETE", self._absolute(uri), "delete")
        except PexipRefused as exc:
            if exc.status != 404:  # already gone is what we wanted
                raise

    def find_uri(self, resource: str, name: str) -> str | None:
        """The resource URI of the object with this exact name (themes, identity provider
        groups are referred to by URI in a conference)."""
        for obj in self.list(resource, name=name):
            if obj.get("name") == name:
                return str(obj["resource_uri"])  # every listed object has one (_page)
        return None

    # --- plumbing ------------------------------------------------------------------------------

    def _absolute(self, uri: str) -> str:
        return urljoin(self.base, uri)

    def _call(
        self,
        method: str,
        url: str,
        operation: str,
        deadline: Deadline | None = None,
        **kwargs: Any,
    ) -> requests.Response:
        if self.verify is not None:
            kwargs["verify"] = self.verify
        timeout = self.timeout
        if deadline is not None:
            timeout = min(timeout, deadline.remaining())
            if timeout <= 0:
                self._count(operation, "deadline")
                raise deadline.passed(method, url)
        try:
            with _Watch(deadline) as watch:
                response = self.session.request(method, url, timeout=timeout, **kwargs)
        except requests.RequestException as exc:
            cut_short = isinstance(exc, requests.Timeout) and timeout < self.timeout
            if deadline is not None and (watch.ended or cut_short or deadline.remaining() <= 0):
                self._count(operation, "deadline")
                raise deadline.passed(method, url) from exc
            self._count(operation, "unreachable")
            raise PexipUnavailable(f"the Management Node cannot be reached: {exc}") from exc
        status = response.status_code
        if status < 300:
            self._count(operation, "ok")
            return response
        if status in (401, 403) or status >= 500 or status == 429:
            self._count(operation, f"http_{status}")
            header = response.headers.get("Retry-After", "")
            asked = f" (Retry-After: {header[:40]})" if header else ""
            raise PexipUnavailable(
                f"the Management Node answered {status}{asked} to {method} {url}: "
                f"{response.text[:300]}",
                retry_after(header),
                status,
                _words(response.text),
            )
        self._count(operation, f"http_{status}")
        fields: dict[str, Any] = {}
        try:
            body = response.json()
            if isinstance(body, dict):
                # {"conference": {"name": [...]}} or {"name": [...]}: flattened to fields
                for key, value in body.items():
                    if isinstance(value, dict):
                        fields.update(value)
                    else:
                        fields[key] = value
        except ValueError:
            pass
        raise PexipRefused(
            f"the Management Node refused {method} {url} ({status}): {response.text[:300]}",
            status,
            fields,
            _words(response.text),
        )

    def _count(self, operation: str, result: str) -> None:
        if self.on_request is not None:
            self.on_request(operation, result)


# --- a deadline for several calls together ------------------------------------------------


class Deadline:
    """When a piece of work of several calls (a lookup: every page, a creation) must be done.
    Each call is given the time left as its timeout and, on a session `watch_deadlines` made,
    is ended when the time is up even in the middle of a read."""

    def __init__(self, seconds: float, what: str) -> None:
        self.seconds = seconds
        self.what = what  # "a personal lookup": what the time is for, as the message says it
        self.at = time.monotonic() + seconds

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def passed(self, method: str, url: str) -> PexipUnavailable:
        return PexipUnavailable(
            f"the Management Node did not answer {method} {urlsplit(url).path} within "
            f"{self.seconds:g} s, the time {self.what} may take"
        )


def watch_deadlines(session: requests.Session) -> requests.Session:
    """Let a call's Deadline end it mid-read: the connection the call holds has its socket
    shut down when the deadline passes (connections are taken from and given back to urllib3's
    pools through `_WatchedPool`). A call without a deadline is not watched."""
    for prefix in ("https://", "http://"):
        session.mount(prefix, _WatchingAdapter())
    return session


class _Watch:
    """One call under a deadline: the connection it holds (set by the pool when the call
    takes one), shut down by a timer when the deadline passes."""

    current = threading.local()

    def __init__(self, deadline: Deadline | None) -> None:
        self.deadline = deadline
        self.ended = False
        self._lock = threading.Lock()
        self._held: BaseHTTPConnection | None = None
        self._timer: threading.Timer | None = None

    def __enter__(self) -> _Watch:
        if self.deadline is not None:
            _Watch.current.watch = self
            self._arm(max(self.deadline.remaining(), 0.0))
        return self

    def __exit__(self, *_: object) -> None:
        if self.deadline is not None:
            _Watch.current.watch = None
            with self._lock:
                self._held = None
                if self._timer is not None:
                    self._timer.cancel()
                self._timer = None

    def _arm(self, seconds: float) -> None:
        self._timer = threading.Timer(seconds, self._end)
        self._timer.daemon = True
        self._timer.start()

    def hold(self, conn: BaseHTTPConnection) -> None:
        with self._lock:
            self._held = conn
            if self.ended:
                _shut(conn)

    def let_go(self, conn: BaseHTTPConnection | None) -> None:
        with self._lock:
            if conn is self._held:
                self._held = None

    def _end(self) -> None:
        with self._lock:
            if self._timer is None:
                return  # the call is over
            self.ended = True
            if self._held is not None and not _shut(self._held):
                self._arm(0.05)  # still connecting (bounded by the timeout): shut it once open


def _shut(conn: BaseHTTPConnection) -> bool:
    """Shut the connection's socket down (a read blocked on it returns at once); False when it
    has none yet."""
    sock = getattr(conn, "sock", None)
    sock = getattr(sock, "socket", sock)  # TLS inside a proxy's TLS: the socket beneath
    if not isinstance(sock, socket.socket):
        return False
    with contextlib.suppress(OSError):  # closed already
        socket.socket.shutdown(sock, socket.SHUT_RDWR)  # not SSLSocket's: it drops its state
    return True


class _WatchedPool(HTTPConnectionPool):
    def _get_conn(self, timeout: float | None = None) -> BaseHTTPConnection:
        conn = super()._get_conn(timeout)
        watch: _Watch | None = getattr(_Watch.current, "watch", None)
        if watch is not None:
            watch.hold(conn)
        return conn

    def _put_conn(self, conn: BaseHTTPConnection | None) -> None:
        watch: _Watch | None = getattr(_Watch.current, "watch", None)
        if watch is not None:
            watch.let_go(conn)
        super()._put_conn(conn)


class _WatchedHTTPSPool(_WatchedPool, HTTPSConnectionPool):
    pass


_WATCHED_POOLS: dict[str, type[HTTPConnectionPool]] = {
    "http": _WatchedPool,
    "https": _WatchedHTTPSPool,
}


class _WatchingAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _WATCHED_POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):  # SOCKS has pools of its own
            manager.pool_classes_by_scheme = _WATCHED_POOLS
        return manager


# --- what the answers must look like ---------------------------------------------------------


def _page(response: requests.Response, what: str) -> tuple[list[dict[str, Any]], str | None]:
    """One tastypie list page: its objects (each a JSON object with its `resource_uri`, as
    every Pexip resource has) and the `next` link. Anything else is PexipUnavailable: a page
    whose objects cannot be trusted must not be acted on (a missing conference would be
    created twice, a missing tag would hide a stray)."""
    try:
        body = response.json()
    except ValueError as exc:  # HTML, an empty or cut-off body (requests' JSONDecodeError too)
        raise _malformed(response, what, f"not JSON ({exc})") from exc
    if not isinstance(body, dict):
        raise _malformed(response, what, "not a JSON object")
    objects = body.get("objects")
    meta = body.get("meta")
    if not isinstance(objects, list) or not isinstance(meta, dict | None):
        raise _malformed(response, what, "no `objects` list under its `meta`")
    following = (meta or {}).get("next")
    if following is not None and not isinstance(following, str):
        raise _malformed(response, what, "a `next` link that is not a string")
    for obj in objects:
        if not isinstance(obj, dict) or not isinstance(obj.get("resource_uri"), str):
            raise _malformed(response, what, "an object without its resource_uri")
    return objects, following


def alias_strings(conference: dict[str, Any]) -> list[str]:
    """A listed conference's aliases (Pexip nests conference_alias objects under `aliases`);
    PexipUnavailable when they are not in that shape, for the same reason as `_page`."""
    aliases = conference.get("aliases") or []
    if not isinstance(aliases, list) or not all(
        isinstance(a, dict) and isinstance(a.get("alias"), str) for a in aliases
    ):
        raise PexipUnavailable(
            f"the Management Node listed conference {conference.get('resource_uri')} with "
            "aliases that are not conference_alias objects"
        )
    return [a["alias"] for a in aliases]


def _words(text: str, limit: int = 300) -> str:
    """What an error answer says, for a log line: its first `limit` characters, each run of
    white space or control characters one space."""
    return " ".join("".join(c if c.isprintable() else " " for c in text[:limit]).split())


def _malformed(response: requests.Response, what: str, why: str) -> PexipUnavailable:
    kind = response.headers.get("Content-Type", "no content type")
    return PexipUnavailable(
        f"the Management Node (or something in front of it) answered {what} with "
        f"{response.status_code} {kind}, {why}: {response.text[:200]!r}"
    )


def retry_after(value: str, now: datetime | None = None) -> float | None:
    """A Retry-After header in seconds (vmrsched.retry_after); how long is honoured is the
    outage's to cap."""
    return waits.seconds(value, now)
