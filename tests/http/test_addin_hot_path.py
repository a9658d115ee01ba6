"""The reservation's hot path (bench/addin_api.py) answers as the slow way would: the joining
instructions are the template rendered with answers.variables of the reserved record and the
meeting details (the parts that do not depend on the record are kept per config); a body without
a length is refused past the limit as request.read() refuses it; every request is timed under
its route and every answer counted by status; versions stay out of the Server header, also on
errors and redirects."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests import spoolkit
from vmrsched import config, service
from vmrsched.http.app import create_app
from vmrsched.messages import answers
from vmrsched.service.addin import INSTRUCTIONS, meeting_details

API = "/api/addin/v1/{}/single-use-vmrs"
# not plain (a statement, a filter): rendered by jinja, not from its pieces
FANCY = (
    "{% if subject %}<p>{{ subject | upper }}</p>{% endif %}"
    "<p>{{alias}} {{numeric_alias}} {{addin_server_domain}} {{organizer_name}}</p>"
    "<p>{{start_time}} to {{end_time}}</p><p>{{alias_uuid}}</p>"
)


def make_config(tmp_path: Path) -> config.Config:
    def integ(name: str, **extra: Any) -> dict[str, Any]:
        return {
            "name": name,
            "exchange": {"mailbox_name": f"Room {name}", "mailbox_email": f"{name}@example.com"},
            "addin": {"token_validation": "none", "server_fqdn": "vc.example.com"},
            "single_use": {"alias_prefix": name[:8]},
            **extra,
        }

    doc = {
        "server": {
            "listen": "127.0.0.1:0",
            "data_dir": str(tmp_path / "data"),
            "max_body_bytes": 1024,
            "admin_token_env": "VMRSCHED_ADMIN_TOKEN",
        },
        "integrations": [
            integ("plain"),
            integ("fancy", email={"single_use_joining_instructions_template": FANCY}),
        ],
    }
    return config.parse(
        doc, tmp_path, {"VMRSCHED_ADMIN_TOKEN": "correct-horse-battery-staple-0123"}
    )


@pytest.fixture
def svc(tmp_path: Path) -> Iterator[service.Service]:
    running = service.start(make_config(tmp_path))
    spoolkit.wait_for(
        lambda: all(running.ctx.status.state(n) == "running" for n in ("plain", "fancy"))
    )
    yield running
    running.stop()


@pytest.fixture
async def client(svc: service.Service) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(create_app(svc))) as test_client:
        yield test_client


@pytest.mark.parametrize("name", ["plain", "fancy"])
@pytest.mark.parametrize(
    "body",
    [
        b"",
        b'{"subject": "Board <meeting> & \\"more\\""}',
        b'{"subject": "Review", "organizer_name": "Ann", "start": "2030-01-02T10:00:00+01:00",'
        b' "end": "2030-01-02T11:00:00Z"}',
    ],
)
async def test_the_instructions_are_the_template_with_the_record_and_the_details(
    client: TestClient[Any, Any], svc: service.Service, name: str, body: bytes
) -> None:
    response = await client.post(
        API.format(name), data=body, headers={"Content-Type": "application/json"}
    )
    assert response.status == 201, await response.text()
    answer = await response.json()
    integ = svc.integration(name)
    record = {
        "alias": answer["alias"],
        "numeric_alias": answer["numeric_alias"],
        "alias_id": answer["alias_id"].removeprefix("PXPS:-").removesuffix("#"),
    }
    values = answers.variables(integ, None, record)
    values.update(meeting_details(body))
    assert answer["joining_instructions"] == integ.renderer().render(INSTRUCTIONS, values)
    assert (answer["room_name"], answer["room_email"]) == (f"Room {name}", f"{name}@example.com")


async def test_a_body_without_a_length_is_refused_past_the_limit(
    client: TestClient[Any, Any], svc: service.Service
) -> None:
    """A chunked body past max_body_bytes is refused before any alias is reserved, as one
    with a Content-Length past the limit is: 413 payload_too_large."""

    async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
        for part in parts:
            yield part

    headers = {"Content-Type": "application/json"}
    small = await client.post(
        API.format("fancy"), data=chunks(b'{"subject":', b' "Chunked"}'), headers=headers
    )
    assert small.status == 201
    assert "<p>CHUNKED</p>" in (await small.json())["joining_instructions"]
    for parts in ([b'{"subject": "' + b"x" * 1100 + b'"}'], [b'{"subject": "', b"y" * 1100, b'"}']):
        large = await client.post(API.format("fancy"), data=chunks(*parts), headers=headers)
        assert large.status == 413
        assert (await large.json())["error"]["code"] == "payload_too_large"
    assert (
        svc.metrics.registry.get_sample_value(
            "vmrsched_addin_requests_total",
            {"integration": "fancy", "route": "single-use-vmrs", "status": "201"},
        )
        == 1
    )
    length = await client.post(API.format("fancy"), data=b" " * 1025, headers=headers)
    assert length.status == 413
    assert (await length.json())["error"] == {
        "code": "payload_too_large",
        "message": "request bodies are limited to 1024 bytes",
    }
    refused = {"integration": "fancy", "route": "single-use-vmrs", "status": "413"}
    assert svc.metrics.registry.get_sample_value("vmrsched_addin_requests_total", refused) == 3
    assert not svc.metrics.registry.get_sample_value(
        "vmrsched_addin_requests_total", {**refused, "status": "500"}
    )


async def test_requests_are_timed_by_route_and_answers_counted_by_status(
    client: TestClient[Any, Any], svc: service.Service
) -> None:
    registry = svc.metrics.registry

    def timed(route: str) -> float | None:
        return registry.get_sample_value(
            "vmrsched_http_request_duration_seconds_count", {"route": route}
        )

    def counted(name: str, status: str) -> float | None:
        return registry.get_sample_value(
            "vmrsched_addin_requests_total",
            {"integration": name, "route": "single-use-vmrs", "status": status},
        )

    for _ in range(2):
        assert (await client.post(API.format("plain"), json={})).status == 201
    assert (await client.post(API.format("fancy"), data=b"{nope")).status == 400
    assert (await client.get("/nowhere")).status == 404
    assert (await client.get("/nowhere/else")).status == 404
    assert (await client.post(API.format("nobody"))).status == 404
    assert timed("/api/addin/v1/{integration}/single-use-vmrs") == 4
    assert timed("unmatched") == 2
    assert counted("plain", "201") == 2
    assert counted("fancy", "400") == 1
    assert counted("fancy", "201") is None


async def test_no_versions_in_the_server_header_of_errors_and_redirects(
    client: TestClient[Any, Any],
) -> None:
    for response in (
        await client.get("/nowhere"),
        await client.post(API.format("nobody")),
        await client.put(API.format("plain")),
        await client.post(API.format("plain"), data=b"[]"),
        await client.get("/admin", allow_redirects=False),
    ):
        assert response.headers["Server"] == "vmrsched", response.status
    assert response.status in (302, 303)


@pytest.mark.parametrize("whole", [True, False])
@pytest.mark.parametrize("size", [0, 1, 1024, 1025])
async def test_read_body_gives_what_request_read_gives(whole: bool, size: int) -> None:
    """Taken from the buffer when the body is there whole, read as aiohttp reads it when it is
    not: the same bytes, and past client_max_size the same refusal."""
    import asyncio
    from unittest import mock

    from aiohttp import web
    from aiohttp.streams import StreamReader
    from aiohttp.test_utils import make_mocked_request

    from vmrsched.http.addin import read_body

    loop = asyncio.get_running_loop()
    body = bytes(range(256)) * 5

    def request() -> web.Request:
        stream = StreamReader(mock.Mock(), 2**16, loop=loop)  # a connection that is open
        stream.feed_data(body[: size // 2])
        stream.feed_data(body[size // 2 : size])
        if whole:
            stream.feed_eof()
        else:
            loop.call_soon(stream.feed_eof)
        return make_mocked_request("POST", "/", payload=stream, client_max_size=1024)

    async def outcome(read: Any) -> bytes | type[BaseException]:
        try:
            return bytes(await read())
        except web.HTTPRequestEntityTooLarge as exc:
            return type(exc)

    fast = await outcome(lambda: read_body(request()))
    assert fast == await outcome(request().read)
    assert fast == (body[:size] if size <= 1024 else web.HTTPRequestEntityTooLarge)
