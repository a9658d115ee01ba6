"""Personal VMRs from Pexip's management API when the Management Node misbehaves, against the
fake Management Node over real HTTP: one lookup (every page, and the user's creation) ends
within its deadline, request_timeout_seconds and never more than the pane waits for, however
slowly the node answers; and a creation Pexip refuses is no user without rooms: the user
created meanwhile by another is used, otherwise the lookup is unavailable, naming Pexip's
answer, and nothing is cached."""

from __future__ import annotations

import socketserver
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from aiohttp import web

from tests.fakes.pexip_server import FakePexip, trickled
from tests.fakes.threaded import ThreadedServer
from vmrsched.config import PexipConfig
from vmrsched.directory import DirectoryUnavailable, PexipDirectory
from vmrsched.pexip.management import ManagementClient

PASSWORD = "management-password-not-to-be-seen"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def directory(url: str, timeout: float = 10.0, allow_new_users: bool = False) -> PexipDirectory:
    settings = PexipConfig(
        management_url=url, management_username="admin", request_timeout_seconds=timeout
    )
    return PexipDirectory(ManagementClient(settings, PASSWORD), allow_new_users)


@pytest.fixture
def fake() -> FakePexip:
    pexip = FakePexip(password=PASSWORD)
    pexip.add_end_user("olga@example.com")
    pexip.add_conference(
        "Olga's room",
        ["meet.olga@video.example.com"],
        primary_owner_email_address="olga@example.com",
    )
    return pexip


def serve(fake: FakePexip, *middlewares: Any) -> ThreadedServer:
    app = fake.app()
    app.middlewares.extend(middlewares)
    return ThreadedServer(app).start()


def timed(lookup: Callable[[], object]) -> tuple[float, BaseException | None]:
    started = time.monotonic()
    try:
        lookup()
    except Exception as exc:  # what it raised is the test's to check
        return time.monotonic() - started, exc
    return time.monotonic() - started, None


@web.middleware
async def trickle(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every list comes as Pexip would answer it, one byte every 50 ms."""
    answer = await handler(request)
    if request.method != "GET" or not isinstance(answer, web.Response) or answer.status != 200:
        return answer
    return await trickled(request, answer)


def test_a_trickling_answer_ends_the_lookup_at_its_deadline(fake: FakePexip) -> None:
    server = serve(fake, trickle)
    try:
        took, raised = timed(lambda: directory(server.url, timeout=1.0).vmrs_of("olga@example.com"))
    finally:
        server.stop()
    assert isinstance(raised, DirectoryUnavailable), raised
    assert "within 1 s" in str(raised)
    assert took < 1.8


def test_every_page_and_call_of_a_lookup_shares_one_deadline(fake: FakePexip) -> None:
    """Each answer comes within request_timeout_seconds, all of them together do not."""
    fake.latency = 0.7
    server = serve(fake)
    try:
        took, raised = timed(lambda: directory(server.url, timeout=1.0).vmrs_of("olga@example.com"))
    finally:
        server.stop()
    assert isinstance(raised, DirectoryUnavailable), raised
    assert took < 1.5


class _Headers(socketserver.BaseRequestHandler):
    """A server that sends its status line and headers one byte every 100 ms, for 12 s."""

    def handle(self) -> None:
        self.request.recv(65536)
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Slow: " + b"a" * 500
        until = time.monotonic() + 12
        for i in range(len(head)):
            if time.monotonic() > until:
                return
            try:
                self.request.sendall(head[i : i + 1])
            except OSError:
                return
            time.sleep(0.1)


@pytest.fixture
def trickling_headers() -> Iterator[str]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Headers)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_headers_that_trickle_end_the_lookup_too_and_so_does_waiting_for_another(
    trickling_headers: str,
) -> None:
    """Two requests for one user at once: the second waits for the first's answer, and no
    longer than its own deadline."""
    lookups = directory(trickling_headers, timeout=1.0)
    with ThreadPoolExecutor(2) as pool:
        asks = [pool.submit(timed, lambda: lookups.vmrs_of("olga@example.com")) for _ in range(2)]
        results = [ask.result(timeout=30) for ask in asks]
    for took, raised in results:
        assert isinstance(raised, DirectoryUnavailable), raised
        assert took < 1.8


@pytest.mark.slow
def test_a_long_request_timeout_still_answers_before_the_pane_gives_up(
    trickling_headers: str,
) -> None:
    """The pane waits 10 s for the add-in API (addin-core.js API_TIMEOUT_MS): a lookup gives
    up well before, whatever request_timeout_seconds allows each request."""
    took, raised = timed(
        lambda: directory(trickling_headers, timeout=60.0).vmrs_of("olga@example.com")
    )
    assert isinstance(raised, DirectoryUnavailable), raised
    assert 6.5 < took < 8.0


def refusing(status: int, text: str, create_first: bool = False) -> Any:
    """POST end_user answered `status` with Pexip's per-field error `text`; `create_first`: the
    user is there after all (another instance created it a moment before)."""

    @web.middleware
    async def refuse(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method != "POST" or not request.path.endswith("/end_user/"):
            return await handler(request)
        refuse.posts += 1  # type: ignore[attr-defined]
        if create_first:
            await handler(request)
        return web.json_response({"end_user": {"primary_email_address": [text]}}, status=status)

    refuse.posts = 0  # type: ignore[attr-defined]
    return refuse


@pytest.mark.parametrize("status", [400, 403, 409, 500])
def test_a_refused_creation_is_unavailable_naming_pexips_answer_and_nothing_is_cached(
    fake: FakePexip, status: int
) -> None:
    refuse = refusing(status, "Enter a valid email address.")
    server = serve(fake, refuse)
    try:
        lookups = directory(server.url, allow_new_users=True)
        for _ in range(2):
            with pytest.raises(DirectoryUnavailable) as refused:
                lookups.vmrs_of("new.starter@example.com")
            said = str(refused.value)
            assert f"({status})" in said and "Enter a valid email address." in said, said
            assert "new.starter@example.com" in said and PASSWORD not in said
            assert lookups.peek("new.starter@example.com") is None
    finally:
        server.stop()
    assert refuse.posts == 2  # asked again: a refusal is not remembered as "no rooms"


def test_pexips_error_text_is_bounded(fake: FakePexip) -> None:
    server = serve(fake, refusing(400, "very long " * 2000))
    try:
        with pytest.raises(DirectoryUnavailable) as refused:
            directory(server.url, allow_new_users=True).vmrs_of("new.starter@example.com")
    finally:
        server.stop()
    assert "(400)" in str(refused.value) and len(str(refused.value)) < 700


@pytest.mark.parametrize("status", [400, 500])
def test_a_refused_creation_of_a_user_created_meanwhile_uses_that_user(
    fake: FakePexip, status: int
) -> None:
    fake.add_conference(
        "New room", ["new.room@video.example.com"], primary_owner_email_address="new@example.com"
    )
    server = serve(fake, refusing(status, "Something went wrong", create_first=True))
    try:
        found = directory(server.url, allow_new_users=True).vmrs_of("new@example.com")
    finally:
        server.stop()
    assert [v.name for v in found] == ["New room"]
    assert [u["primary_email_address"] for u in fake.end_users.values()].count(
        "new@example.com"
    ) == 1
