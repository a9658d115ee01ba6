"""The connection guard in front of aiohttp, over real sockets: at the cap the oldest connection
that has not sent a request yet is shed so a new request is served; what a connection may send
before its headers end is bounded, per connection and in total."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from vmrsched.http import guard
from vmrsched.http.guard import Limits, guarded


async def ok(_: web.Request) -> web.Response:
    return web.Response(text="ok")


async def length(request: web.Request) -> web.Response:
    return web.Response(text=str(len(await request.read())))


@pytest.fixture
async def served() -> AsyncIterator[tuple[int, Limits]]:
    app = web.Application(client_max_size=1024 * 1024)
    app.router.add_get("/healthz", ok)
    app.router.add_post("/length", length)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    limits = Limits(cap=20, header_timeout=30.0)
    server = await asyncio.get_running_loop().create_server(
        guarded(runner.server, limits),  # type: ignore[arg-type]
        "127.0.0.1",
        0,
    )
    port = server.sockets[0].getsockname()[1]
    try:
        yield port, limits
    finally:
        server.close()
        await runner.cleanup()


async def health(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return answer


async def closed(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), 2) == b""
    except ConnectionError:
        return True
    except TimeoutError:
        return False  # still open


async def test_at_the_cap_the_oldest_silent_connection_makes_room(
    served: tuple[int, Limits],
) -> None:
    port, limits = served
    silent: list[tuple[asyncio.StreamReader, Any]] = []
    for _ in range(limits.cap):
        silent.append(await asyncio.open_connection("127.0.0.1", port))
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.1)
    assert limits.active == limits.cap
    answer = await health(port)  # the cap is full of clients that never asked anything
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"ok")
    assert limits.shed == 1 and limits.refused == 0
    assert await closed(silent[0][0])  # the oldest went
    for _, writer in silent:
        writer.close()


async def test_headers_that_never_end_are_cut_off(
    served: tuple[int, Limits], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, limits = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    for _ in range(guard.HEAD_BYTES_PER_CONNECTION // 1000 + 2):  # a header a kilobyte at a time
        writer.write(b"X-Pad: " + b"a" * 990 + b"\r\n")
        await writer.drain()
    assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 431")
    assert limits.head_bytes == 0 and not limits.waiting
    writer.close()
    assert (await health(port)).startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize("size", [60_000, 65_536, 200_000])
async def test_a_body_sent_in_the_same_write_as_its_headers_is_not_taken_for_headers(
    served: tuple[int, Limits], size: int
) -> None:
    port, _ = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"POST /length HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {size}\r\n"
    writer.write(head.encode() + b"Connection: close\r\n\r\n" + b"a" * size)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(str(size).encode())


@pytest.mark.parametrize("at_once", [True, False])
async def test_a_head_over_the_limit_is_cut_off_however_it_arrives(
    served: tuple[int, Limits], at_once: bool
) -> None:
    port, limits = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    pad = b"X-Pad: " + b"a" * guard.HEAD_BYTES_PER_CONNECTION + b"\r\n"
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + pad + b"\r\n"
    for part in [head] if at_once else [head[:1000], head[1000:]]:
        writer.write(part)
        await writer.drain()
        await asyncio.sleep(0.05)
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    status, _, body = answer.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 431") and b"application/json" in status
    assert json.loads(body)["error"]["code"] == "headers_too_large"
    assert limits.head_bytes == 0 and not limits.waiting
    assert (await health(port)).startswith(b"HTTP/1.1 200")


async def test_the_end_of_the_headers_may_straddle_two_reads(served: tuple[int, Limits]) -> None:
    port, limits = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r")
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.write(b"\n")
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200") and not limits.waiting


async def test_half_sent_headers_over_all_connections_are_bounded(
    served: tuple[int, Limits], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, limits = served
    monkeypatch.setattr(guard, "HEAD_BYTES_TOTAL", 40_000)
    slow = []
    for _ in range(10):  # 10 x 8 KB half-sent: past the total, the oldest are shed
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nX-Pad: " + b"b" * 8000)
        await writer.drain()
        slow.append((reader, writer))
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)
    assert limits.head_bytes <= 40_000
    assert limits.shed >= 5
    assert await closed(slow[0][0])
    assert (await health(port)).startswith(b"HTTP/1.1 200")
    for _, writer in slow:
        writer.close()
