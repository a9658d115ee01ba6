"""A small client of the Pexip Infinity management API (configuration resources on the Management
Node): Basic auth, tastypie lists with paging, POST/PATCH/DELETE, and Pexip's error shapes turned
into two kinds of failure: the node is unreachable or busy (retry later, whole integration) or it
refused one request (a 4xx with field errors: that conference only). An answer that is not the
JSON Pexip documents (a proxy's or load balancer's HTML page with status 200, a body cut off, an
envelope or object of another shape) is the first kind: whatever stands between us and the node
is not answering as the node would, so nothing in it is trusted or acted on. Every server the
client reaches is checked against the configured CA file, whatever REQUESTS_CA_BUNDLE or
CURL_CA_BUNDLE say. Synchronous, for the provisioner's actor thread."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests

from vmrsched import retry_after as waits
from vmrsched.config import PexipConfig

log = logging.getLogger("vmrsched.pexip")
API = "/api/admin/configuration/v1/"
PAGE = 500  # objects per list page (Pexip's default is 20)


class PexipUnavailable(Exception):
    """The Management Node did not answer usefully (connection, timeout, 5xx, 401/403): try again
    later. `retry_after` when it said how long to wait."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PexipRefused(Exception):
    """The Management Node refused one request (400/404/409): `fields` holds its per-field
    errors (e.g. {"name": ["Conference with this Name already exists."]})."""

    def __init__(self, message: str, status: int, fields: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.fields = fields or {}

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

    def list(self, resource: str, **filters: str) -> Iterator[dict[str, Any]]:
        """Every object of a resource, page by page. Pexip ignores filters it does not know,
        so callers check what they get rather than trust the filter."""
        url: str | None = urljoin(self.base, f"{resource}/")
        params: dict[str, Any] | None = {**filters, "limit": PAGE, "offset": 0}
        while url is not None:
            response = self._call("GET", url, f"list_{resource}", params=params)
            objects, following = _page(response, f"the {resource} list")
            yield from objects
            url = urljoin(self.base, following) if following else None
            params = None  # `next` carries the query

    def create(self, resource: str, fields: dict[str, Any]) -> str:
        """POST; the new object's URI path (from Location, as Pexip answers 201)."""
        url = urljoin(self.base, f"{resource}/")
        response = self._call("POST", url, f"create_{resource}", json=fields)
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

    def _call(self, method: str, url: str, operation: str, **kwargs: Any) -> requests.Response:
        if self.verify is not None:
            kwargs["verify"] = self.verify
        try:
            response = self.session.request(method, url, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
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
        )

    def _count(self, operation: str, result: str) -> None:
        if self.on_request is not None:
            self.on_request(operation, result)


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
