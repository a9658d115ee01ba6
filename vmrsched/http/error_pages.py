"""Errors a person sees in a browser tab: the console, the organizer page and the add-in's
sign-in dialog are pages, and a page's error should read as one. An error answer to a browser's
navigation or form post there (it asks for text/html) is the same error as an HTML page with
the same status, code, message and headers (Retry-After, Allow, WWW-Authenticate), and a link
back; every other client (the add-in's fetch, the APIs, scripts, curl) keeps DESIGN's JSON
`{"error": {"code", "message"}}`."""

from __future__ import annotations

import json
from http import HTTPStatus

from aiohttp import web

from vmrsched.http.common import PAGES, SERVICE, page_headers

# what is a page, and the style sheet its error page borrows (the API under /api/ never is)
_STYLES = (
    ("/admin", "/admin/static/admin.css"),
    ("/my/", "/my/static/organizer.css"),
    ("/addin/", "/addin/static/pane.css"),
)
_KEPT = ("Retry-After", "Allow", "WWW-Authenticate")
# the add-in's pages are shown inside Outlook's frames; the others are never framed
_OUTLOOK = (
    "'self' https://*.office.com https://*.office365.com https://*.outlook.com "
    "https://outlook.live.com https://*.microsoft.com"
)


def _style(path: str) -> str | None:
    for prefix, style in _STYLES:
        if path.startswith(prefix):
            return style
    return None


def _back(request: web.Request) -> tuple[str, str]:
    """Where the page's link leads: the console, or the organizer's own bookings (of an
    integration that exists)."""
    path = request.path
    if path.startswith("/admin"):
        return "/admin", "Back to the console"
    name = request.match_info.get("integration", "")
    if path.startswith("/my/") and request.app[SERVICE].config.integration(name) is not None:
        return f"/my/{name}", "Back to your bookings"
    return "", ""


def wants_page(request: web.Request) -> bool:
    """A browser tab asking for a page of ours (navigation and form posts send Accept with
    text/html; fetch and scripts do not)."""
    return _style(request.path) is not None and "text/html" in request.headers.get("Accept", "")


def for_browser(request: web.Request, response: web.Response) -> web.Response:
    """`response` (a JSON error) as an HTML page when a browser tab asked for a page, else as
    it is."""
    if response.status < 400 or not wants_page(request):
        return response
    try:
        error = json.loads(response.body)["error"]  # type: ignore[arg-type]
        code, message = str(error["code"]), str(error["message"])
    except (TypeError, ValueError, KeyError):
        return response
    try:
        title = f"{response.status} {HTTPStatus(response.status).phrase}"
    except ValueError:  # 499 client_gone: nobody reads it, but it has a name
        title = f"{response.status} {code.replace('_', ' ')}"
    back, back_text = _back(request)
    page = PAGES.get_template("error.html").render(
        title=title,
        message=message,
        code=code,
        retry_after=response.headers.get("Retry-After", ""),
        style=_style(request.path),
        back=back,
        back_text=back_text,
    )
    framing = _OUTLOOK if request.path.startswith("/addin/") else "'none'"
    csp = (
        "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; "
        f"form-action 'none'; frame-ancestors {framing}"
    )
    headers = page_headers(csp)
    headers.update({k: response.headers[k] for k in _KEPT if k in response.headers})
    return web.Response(
        text=page, status=response.status, content_type="text/html", headers=headers
    )
