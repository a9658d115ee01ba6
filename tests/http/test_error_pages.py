"""An error a person meets in a browser tab (the console, the organizer page, the add-in's
sign-in dialog) is a page with the same status, code and message, and the headers that tell the
browser what to do (Allow, Retry-After); what every other client gets stays DESIGN's JSON."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

# the started service of the HTTP edge's tests (one integration, "default", token "none")
from tests.http.test_edge import svc  # noqa: F401

BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


async def test_a_console_page_that_does_not_exist_is_a_page_for_a_browser(
    client: TestClient[Any, Any],
) -> None:
    answer = await client.get("/admin/no-such-page", headers={"Accept": BROWSER})
    assert answer.status == 404
    assert answer.content_type == "text/html"
    page = await answer.text()
    assert "<title>404 Not Found</title>" in page
    assert "<code>not_found</code>" in page
    assert '<a href="/admin">Back to the console</a>' in page
    assert '<link rel="stylesheet" href="/admin/static/admin.css">' in page
    csp = answer.headers["Content-Security-Policy"]
    assert "script-src" not in csp and "default-src 'none'" in csp
    assert "frame-ancestors 'none'" in csp
    assert answer.headers["X-Content-Type-Options"] == "nosniff"


async def test_the_same_error_is_json_for_every_other_client(
    client: TestClient[Any, Any],
) -> None:
    for accept in ("*/*", "application/json", None):
        headers = {"Accept": accept} if accept else {}
        answer = await client.get("/admin/no-such-page", headers=headers)
        assert answer.status == 404
        assert (await answer.json())["error"]["code"] == "not_found"
    # the API is JSON whatever the client asks for
    api = await client.get("/api/admin/v1/integrations", headers={"Accept": BROWSER})
    assert api.status == 401
    assert (await api.json())["error"]["code"]


async def test_a_post_to_a_get_only_page_keeps_its_allow_header(
    client: TestClient[Any, Any],
) -> None:
    methods = await client.post("/admin/static/admin.css", headers={"Accept": BROWSER})
    assert methods.status == 405
    assert methods.content_type == "text/html"
    assert "GET" in methods.headers["Allow"]
    assert "<title>405 Method Not Allowed</title>" in await methods.text()


async def test_the_organizer_page_of_an_unknown_integration_links_nowhere(
    client: TestClient[Any, Any],
) -> None:
    answer = await client.get("/my/no-such", headers={"Accept": BROWSER})
    assert answer.status == 404
    page = await answer.text()
    assert "unknown integration" in page and "<code>unknown_integration</code>" in page
    assert "Back to" not in page
    assert '<link rel="stylesheet" href="/my/static/organizer.css">' in page


async def test_what_the_error_says_is_escaped(client: TestClient[Any, Any]) -> None:
    # a wrong Host is refused before any route: its page says so, and nothing of the request
    # is written into it unescaped
    answer = await client.get(
        "/admin/<script>alert(1)</script>",
        headers={"Accept": BROWSER, "Host": "evil.example.com"},
    )
    assert answer.status == 421
    page = await answer.text()
    assert "<script>" not in page
    assert "<code>host_not_allowed</code>" in page
