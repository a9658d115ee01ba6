"""A fake Pexip Infinity Management Node, from Pexip's documented management API (configuration
resources under /api/admin/configuration/v1/): Basic auth (401 otherwise); tastypie lists with a
`meta` envelope (limit, offset, next, previous, total_count) and `objects`, paged (default limit
20); exact filters on the fields it knows and unknown filters silently ignored, as Pexip does;
POST answers 201 with an empty body and the new object's URL in Location; PATCH 202; DELETE 204;
a conference's aliases are conference_alias objects (configuration/v1/conference_alias: alias,
conference, description, id), nested in the conference as Pexip lists them, added with a POST
of {"alias", "conference": <conference URI>} and removed with a DELETE of their own URI (Pexip's
"Adding a Virtual Meeting Room alias"); a PATCH of a conference checks what it changes as a POST
does and replaces the aliases when it names them;
400 with per-field errors on a duplicate conference name or alias, on a field over its documented
length (name, description, tag, alias: 250 characters), on a non_idp_participants value Pexip
does not take (disallow_all, allow_if_trusted), on an identity provider group or theme it does
not hold and on an alias a registered device (configuration/v1/device) holds; 400 on a second
end user with one primary email address; 404 for unknown objects.
`down` answers 503 to everything (an outage); `fail_next` fails the next requests with a status;
`retry_after` adds that Retry-After header to those failures (a load balancer in front of the
node); `fail_lists` answers list requests with that status and an HTML page (a proxy in the way);
`list_body` answers them 200 with that (content type, body) instead: not what Pexip documents
(a proxy's login page, a body cut off, another shape);
`refuse` adds per-field refusals to every conference created (say, a rule Pexip enforces)."""

from __future__ import annotations

import asyncio
import base64
import itertools
import threading
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

API = "/api/admin/configuration/v1/"
FILTERS = {
    "conference": {"name", "tag", "service_type"},
    "ivr_theme": {"name"},
    "identity_provider_group": {"name"},
    "end_user": {"primary_email_address"},
    "device": {"alias"},
    "conference_alias": {"alias", "conference"},
}
MAX_LENGTH = 250  # name, description, tag, alias
NON_IDP = ("disallow_all", "allow_if_trusted")


def _alias_values(body: dict[str, Any]) -> list[str]:
    """The aliases a POST or PATCH of a conference names (objects, or plain strings)."""
    return [
        str(a.get("alias", "")) if isinstance(a, dict) else str(a)
        for a in body.get("aliases") or []
    ]


def _too_long(value: str) -> list[str]:
    return [f"Ensure this value has at most {MAX_LENGTH} characters (it has {len(value)})."]


async def trickled(request: web.Request, answer: web.Response) -> web.StreamResponse:
    """`answer` as a slow Management Node (or the link to it) sends it: one byte every 50 ms,
    each within any read timeout, the whole far beyond it."""
    body = bytes(answer.body)  # type: ignore[arg-type]
    slow = web.StreamResponse(
        headers={"Content-Type": "application/json", "Content-Length": str(len(body))}
    )
    await slow.prepare(request)
    for i in range(len(body)):
        await slow.write(body[i : i + 1])
        await asyncio.sleep(0.05)
    return slow


class FakePexip:
    def __init__(self, username: str = "admin", password: str = "pexip-secret") -> None:
        self.username, self.password = username, password
        self.lock = threading.Lock()
        self.ids = itertools.count(1)
        self.conferences: dict[int, dict[str, Any]] = {}
        self.themes: dict[int, dict[str, Any]] = {}
        self.groups: dict[int, dict[str, Any]] = {}
        self.end_users: dict[int, dict[str, Any]] = {}
        self.devices: dict[int, dict[str, Any]] = {}
        self.down = False
        self.fail_next: list[int] = []
        self.fail_lists = 0  # a status for every list request (0: none)
        self.retry_after = ""  # a Retry-After header on injected failures and outages
        self.list_body: tuple[str, str] | None = None  # (content type, body) for every list
        self.refuse: dict[str, list[str]] = {}
        self.latency = 0.0  # seconds each collection request takes (races show)
        self.requests: list[tuple[str, str]] = []  # (method, path)

    # --- test helpers ----------------------------------------------------------------------

    def add_theme(self, name: str) -> str:
        theme_id = next(self.ids)
        uri = f"{API}ivr_theme/{theme_id}/"
        self.themes[theme_id] = {"id": theme_id, "name": name, "resource_uri": uri}
        return uri

    def add_group(self, name: str) -> str:
        group_id = next(self.ids)
        uri = f"{API}identity_provider_group/{group_id}/"
        self.groups[group_id] = {"id": group_id, "name": name, "resource_uri": uri}
        return uri

    def add_conference(
        self, name: str, aliases: list[str], tag: str = "", **fields: Any
    ) -> dict[str, Any]:
        with self.lock:
            return self._store_conference({"name": name, "aliases": aliases, "tag": tag, **fields})

    def add_device(self, alias: str) -> dict[str, Any]:
        """A device registered to Pexip (configuration/v1/device): its alias is taken."""
        with self.lock:
            device_id = next(self.ids)
            device = {
                "id": device_id,
                "alias": alias,
                "description": "",
                "resource_uri": f"{API}device/{device_id}/",
            }
            self.devices[device_id] = device
            return device

    def add_end_user(self, email: str) -> dict[str, Any]:
        with self.lock:
            return self._store_end_user(email)

    def _store_end_user(self, email: str) -> dict[str, Any]:
        user_id = next(self.ids)
        user = {
            "id": user_id,
            "primary_email_address": email,
            "resource_uri": f"{API}end_user/{user_id}/",
        }
        self.end_users[user_id] = user
        return user

    def by_tag(self, prefix: str) -> dict[str, dict[str, Any]]:
        with self.lock:
            return {c["tag"]: c for c in self.conferences.values() if c["tag"].startswith(prefix)}

    def alias_set(self) -> set[str]:
        with self.lock:
            return {a["alias"] for c in self.conferences.values() for a in c["aliases"]}

    # --- the API --------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", API + "{resource}/", self._collection)
        app.router.add_route("*", API + "{resource}/{id:\\d+}/", self._item)
        return app

    def _check(self, request: web.Request) -> web.Response | None:
        self.requests.append((request.method, request.path))
        headers = {"Retry-After": self.retry_after} if self.retry_after else {}
        if self.down:
            return web.Response(status=503, text="Service Unavailable", headers=headers)
        if self.fail_next:
            status = self.fail_next.pop(0)
            return web.Response(status=status, text="injected failure", headers=headers)
        expected = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        if request.headers.get("Authorization", "") != f"Basic {expected}":
            return web.Response(status=401, text="Authorization Required")
        return None

    def _table(self, resource: str) -> dict[int, dict[str, Any]] | None:
        return {
            "conference": self.conferences,
            "ivr_theme": self.themes,
            "identity_provider_group": self.groups,
            "end_user": self.end_users,
            "device": self.devices,
            "conference_alias": self._aliases(),
        }.get(resource)

    def _aliases(self) -> dict[int, dict[str, Any]]:
        """Every conference_alias object by id (a view of the conferences' nested aliases)."""
        return {
            a["id"]: {**a, "resource_uri": f"{API}conference_alias/{a['id']}/"}
            for c in self.conferences.values()
            for a in c["aliases"]
        }

    async def _collection(self, request: web.Request) -> web.StreamResponse:
        refused = self._check(request)
        if refused is not None:
            return refused
        if self.latency:
            await asyncio.sleep(self.latency)
        resource = request.match_info["resource"]
        table = self._table(resource)
        if table is None:
            return web.Response(status=404)
        if request.method == "GET":
            if self.fail_lists:
                return web.Response(
                    status=self.fail_lists, text="<html><body>Bad Request</body></html>"
                )
            if self.list_body is not None:
                kind, text = self.list_body
                return web.Response(status=200, text=text, content_type=kind)
            return self._list(request, resource, table)
        if request.method == "POST" and resource == "conference_alias":
            body = await request.json()
            with self.lock:
                errors, conference = self._validate_alias(body)
                if errors or conference is None:
                    return web.json_response({"conference_alias": errors}, status=400)
                alias = self._new_alias(str(body["alias"]), conference["resource_uri"])
                conference["aliases"].append(alias)
            location = f"{request.scheme}://{request.host}{API}conference_alias/{alias['id']}/"
            return web.Response(status=201, headers={"Location": location})
        if request.method == "POST" and resource == "end_user":
            body = await request.json()
            email = str(body.get("primary_email_address", ""))
            with self.lock:
                if any(
                    u["primary_email_address"].lower() == email.lower()
                    for u in self.end_users.values()
                ):
                    error = ["End user with this Primary email address already exists."]
                    return web.json_response(
                        {"end_user": {"primary_email_address": error}}, status=400
                    )
                user = self._store_end_user(email)
            location = f"{request.scheme}://{request.host}{user['resource_uri']}"
            return web.Response(status=201, headers={"Location": location})
        if request.method == "POST" and resource == "conference":
            body = await request.json()
            with self.lock:
                errors = self._validate(body)
                if errors:
                    return web.json_response({"conference": errors}, status=400)
                conference = self._store_conference(body)
            location = f"{request.scheme}://{request.host}{conference['resource_uri']}"
            return web.Response(status=201, headers={"Location": location})
        return web.Response(status=405)

    def _list(
        self, request: web.Request, resource: str, table: dict[int, dict[str, Any]]
    ) -> web.Response:
        known = FILTERS.get(resource, set())
        filters = {k: v for k, v in request.query.items() if k in known}  # others ignored
        limit = int(request.query.get("limit", "20"))
        offset = int(request.query.get("offset", "0"))
        with self.lock:
            matching = [
                dict(obj)
                for _, obj in sorted(table.items())
                if all(str(obj.get(k, "")) == v for k, v in filters.items())
            ]
        page = matching[offset : offset + limit]
        more = offset + limit < len(matching)

        def link(at: int) -> str:
            query = {**request.query, "limit": str(limit), "offset": str(at)}
            return f"{API}{resource}/?{urlencode(query)}"

        meta = {
            "limit": limit,
            "offset": offset,
            "total_count": len(matching),
            "next": link(offset + limit) if more else None,
            "previous": link(max(0, offset - limit)) if offset else None,
        }
        return web.json_response({"meta": meta, "objects": page})

    async def _item(self, request: web.Request) -> web.StreamResponse:
        refused = self._check(request)
        if refused is not None:
            return refused
        table = self._table(request.match_info["resource"])
        item_id = int(request.match_info["id"])
        if table is None or item_id not in table:
            return web.Response(status=404)
        if request.method == "GET":
            return web.json_response(table[item_id])
        if request.method == "DELETE":
            with self.lock:
                if request.match_info["resource"] == "conference_alias":
                    for conference in self.conferences.values():
                        conference["aliases"] = [
                            a for a in conference["aliases"] if a["id"] != item_id
                        ]
                else:
                    del table[item_id]
            return web.Response(status=204)
        if request.method == "PATCH":
            body = await request.json()
            with self.lock:
                if request.match_info["resource"] == "conference":
                    errors = self._validate(body, own=item_id)
                    if errors:
                        return web.json_response({"conference": errors}, status=400)
                    if "aliases" in body:
                        uri = table[item_id]["resource_uri"]
                        table[item_id]["aliases"] = [
                            self._new_alias(a, uri) for a in _alias_values(body)
                        ]
                table[item_id].update({k: v for k, v in body.items() if k != "aliases"})
            return web.Response(status=202)
        return web.Response(status=405)

    def _validate(self, body: dict[str, Any], own: int | None = None) -> dict[str, Any]:
        """A POST's errors; with `own`, a PATCH of that conference's (only what it names)."""
        errors: dict[str, Any] = {k: list(v) for k, v in self.refuse.items()} if own is None else {}
        others = [c for i, c in self.conferences.items() if i != own]
        name = str(body.get("name", ""))
        if own is not None and "name" not in body:
            pass
        elif not name:
            errors["name"] = ["This field is required."]
        elif len(name) > MAX_LENGTH:
            errors["name"] = _too_long(name)
        elif any(c["name"].lower() == name.lower() for c in others):
            errors["name"] = ["Conference with this Name already exists."]
        for key in ("description", "tag"):
            if len(str(body.get(key) or "")) > MAX_LENGTH:
                errors[key] = _too_long(str(body[key]))
        taken = {a["alias"].lower() for c in others for a in c["aliases"]}
        devices = {d["alias"].lower() for d in self.devices.values()}
        wanted = _alias_values(body)
        if any(a.lower() in taken for a in wanted):
            errors["aliases"] = [{"alias": ["Conference alias with this Alias already exists."]}]
        elif any(a.lower() in devices for a in wanted):
            errors["aliases"] = [{"alias": ["This alias is already in use by a device."]}]
        elif any(len(a) > MAX_LENGTH for a in wanted):
            errors["aliases"] = [{"alias": _too_long(max(wanted, key=len))}]
        theme = body.get("ivr_theme")
        if theme and not any(t["resource_uri"] == theme for t in self.themes.values()):
            errors["ivr_theme"] = ["Could not find the theme."]
        for key in ("host_identity_provider_group", "guest_identity_provider_group"):
            group = body.get(key)
            if group and not any(g["resource_uri"] == group for g in self.groups.values()):
                errors[key] = ["Could not find the identity provider group."]
        non_idp = body.get("non_idp_participants", "disallow_all")
        if (own is None or "non_idp_participants" in body) and non_idp not in NON_IDP:
            errors["non_idp_participants"] = [
                f"Select a valid choice. {non_idp} is not one of the available choices."
            ]
        return errors

    def _validate_alias(self, body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """A conference_alias POST's errors, and the conference it is for."""
        alias = str(body.get("alias") or "")
        target = str(body.get("conference") or "")
        conference = next(
            (c for c in self.conferences.values() if c["resource_uri"] == target), None
        )
        errors: dict[str, Any] = {}
        taken = {a["alias"].lower() for c in self.conferences.values() for a in c["aliases"]}
        if not alias:
            errors["alias"] = ["This field is required."]
        elif len(alias) > MAX_LENGTH:
            errors["alias"] = _too_long(alias)
        elif alias.lower() in taken:
            errors["alias"] = ["Conference alias with this Alias already exists."]
        elif alias.lower() in {d["alias"].lower() for d in self.devices.values()}:
            errors["alias"] = ["This alias is already in use by a device."]
        if conference is None:
            errors["conference"] = ["Could not find the conference."]
        return errors, conference

    def _new_alias(self, alias: str, conference_uri: str) -> dict[str, Any]:
        return {
            "alias": alias,
            "conference": conference_uri,
            "description": "",
            "id": next(self.ids),
        }

    def _store_conference(self, body: dict[str, Any]) -> dict[str, Any]:
        conference_id = next(self.ids)
        uri = f"{API}conference/{conference_id}/"
        aliases = _alias_values(body)
        conference = {
            "id": conference_id,
            "name": body["name"],
            "service_type": body.get("service_type", "conference"),
            "description": body.get("description", ""),
            "tag": body.get("tag", ""),
            "ivr_theme": body.get("ivr_theme"),
            "primary_owner_email_address": body.get("primary_owner_email_address", ""),
            "pin": body.get("pin", ""),
            "guest_pin": body.get("guest_pin", ""),
            "allow_guests": body.get("allow_guests", False),
            "host_identity_provider_group": body.get("host_identity_provider_group"),
            "guest_identity_provider_group": body.get("guest_identity_provider_group"),
            "non_idp_participants": body.get("non_idp_participants", "disallow_all"),
            "aliases": [self._new_alias(a, uri) for a in aliases],
            "resource_uri": uri,
        }
        self.conferences[conference_id] = conference
        return conference
