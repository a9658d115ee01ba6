"""The admin API over real HTTP against the running service (spool mailbox): integrations with
state, alarms and lag; the decisions log; conferences and reservations with their windows;
resending joining instructions; deleting an alias (a meeting carrying it is declined
alias_deleted from then on, the policy endpoint rejects it, the organizer is told); reload; and
the auth cases (no token, wrong token, cookie without CSRF token, login rate limit)."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests import spoolkit
from vmrsched import config, service
from vmrsched.http.app import create_app

ADMIN = "admin-token-for-tests-0123456789abcdef"
BEARER = {"Authorization": f"Bearer {ADMIN}"}
NODE = {"Authorization": "Basic " + base64.b64encode(b"pexip-node:node-password-42").decode()}


@pytest.fixture
def svc(tmp_path: Path) -> Iterator[service.Service]:
    doc = {
        "server": {
            "data_dir": str(tmp_path / "data"),
            "admin_token_env": "ADMIN",
            "policy_username": "pexip-node",
            "policy_password_env": "POLICY_PW",
        },
        "integrations": [
            {
                "name": "hq",
                "exchange": {"mailbox_name": "Video Room", "mailbox_email": "vmr@example.com"},
                "addin": {"token_validation": "none", "server_fqdn": "vmr.example.com"},
                "spool": {"poll_interval_seconds": 0.05},
            }
        ],
    }
    env = {"ADMIN": ADMIN, "POLICY_PW": "node-password-42"}
    running = service.start(config.parse(doc, tmp_path, env))
    spoolkit.wait_for(lambda: running.ctx.status.state("hq") == "running")
    yield running
    running.stop()


def spool_of(svc: service.Service) -> Path:
    return svc.config.integrations[0].spool_dir(svc.config.data_dir)


async def book(
    client: TestClient[Any, Any], svc: service.Service, start: datetime, subject: str
) -> tuple[dict[str, Any], str]:
    vmr = await (await client.post("/api/addin/v1/hq/single-use-vmrs", json={})).json()
    data, uid = spoolkit.request(
        body=vmr["joining_instructions"], start=start, minutes=60, subject=subject
    )
    spoolkit.wait_handled(spool_of(svc), spoolkit.drop(spool_of(svc) / "inbox", data))
    spoolkit.wait_for(lambda: bool(spoolkit.answers_for(spool_of(svc), uid)))
    return vmr, uid


async def get(client: TestClient[Any, Any], path: str, **params: str) -> Any:
    response = await client.get(f"/api/admin/v1{path}", headers=BEARER, params=params)
    assert response.status == 200, await response.text()
    return await response.json()


async def test_overview_decisions_and_aliases(
    client: TestClient[Any, Any], svc: service.Service
) -> None:
    start = (datetime.now(UTC) + timedelta(days=2)).replace(
        hour=9, minute=0, second=0, microsecond=0
    )
    vmr, uid = await book(client, svc, start, "Budget review")
    spoolkit.drop(spool_of(svc) / "inbox", spoolkit.request(body="<p>no token</p>")[0])
    spoolkit.wait_for(lambda: len(spoolkit.outbox(spool_of(svc))) >= 2)

    overview = (await get(client, "/integrations"))["integrations"]
    assert [(i["name"], i["state"], i["alarms"]) for i in overview] == [("hq", "running", [])]
    assert overview[0]["mailbox_lag_seconds"] is not None

    found = (await get(client, "/integrations/hq/decisions", q="budget"))["decisions"]
    assert len(found) == 1
    entry = found[0]
    assert (entry["outcome"], entry["reason"], entry["alias"]) == (
        "accepted",
        "new_single",
        vmr["alias"],
    )
    assert entry["organizer"] == "olga@example.com" and entry["correlation_id"]
    assert entry["meeting_uid"] == uid and entry["time"]
    declined = await get(client, "/integrations/hq/decisions", q="invalid_alias_id")
    assert [d["outcome"] for d in declined["decisions"]] == ["declined"]

    aliases = (await get(client, "/integrations/hq/aliases", q="budget olga"))["aliases"]
    assert [a["alias"] for a in aliases] == [vmr["alias"]]
    booked = aliases[0]
    assert booked["status"] == "bound" and booked["subject"] == "Budget review"
    window = booked["windows"][0]
    assert window["start"] == start.isoformat()
    assert window["joinable_from"] < window["start"] < window["end"] < window["joinable_until"]

    day = start.date().isoformat()
    other_day = (start + timedelta(days=1)).date().isoformat()
    assert len((await get(client, "/integrations/hq/aliases", day=day))["aliases"]) == 1
    assert (await get(client, "/integrations/hq/aliases", day=other_day))["aliases"] == []
    bad = await client.get("/api/admin/v1/integrations/hq/aliases?day=monday", headers=BEARER)
    assert (bad.status, (await bad.json())["error"]["code"]) == (400, "bad_day")
    for day in ("9999-12-31", "0001-01-01", "2026-13-01"):  # no 500 past the calendar's ends
        bad = await client.get(f"/api/admin/v1/integrations/hq/aliases?day={day}", headers=BEARER)
        assert (bad.status, (await bad.json())["error"]["code"]) == (400, "bad_day"), day
    for limit in ("0", "1001", "ten"):  # openapi.yaml: 1 to 1000
        bad = await client.get(
            f"/api/admin/v1/integrations/hq/aliases?limit={limit}", headers=BEARER
        )
        assert (bad.status, (await bad.json())["error"]["code"]) == (400, "bad_limit")
    assert len((await get(client, "/integrations/hq/aliases", limit="1000"))["aliases"]) == 1


async def test_resend_then_delete_an_alias(
    client: TestClient[Any, Any], svc: service.Service
) -> None:
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=5)
    vmr, uid = await book(client, svc, start, "Board call")
    alias = vmr["alias"]
    spool = spool_of(svc)

    resent = await client.post(
        f"/api/admin/v1/integrations/hq/aliases/{alias}/resend", headers=BEARER
    )
    assert resent.status == 202
    spoolkit.wait_for(lambda: any(m.outcome == "resent" for m in spoolkit.outbox(spool)))
    mail = next(m for m in spoolkit.outbox(spool) if m.outcome == "resent")
    assert mail.headers["To"] == "olga@example.com" and alias in mail.html
    assert "Board call" in mail.headers["Subject"]

    policy = {"local_alias": alias, "protocol": "sip", "call_direction": "dial_in"}
    live = await client.get("/policy/v1/service/configuration", params=policy, headers=NODE)
    assert (await live.json())["action"] == "continue"

    deleted = await client.delete(f"/api/admin/v1/integrations/hq/aliases/{alias}", headers=BEARER)
    assert deleted.status == 200
    assert (await deleted.json())["alias"]["status"] == "deleted"
    spoolkit.wait_for(lambda: any(m.outcome == "deleted" for m in spoolkit.outbox(spool)))
    notice = next(m for m in spoolkit.outbox(spool) if m.outcome == "deleted")
    assert "removed by an administrator" in notice.html and alias in notice.html

    refused = await client.get("/policy/v1/service/configuration", params=policy, headers=NODE)
    assert (await refused.json())["action"] == "reject"

    # the organizer edits the meeting, which still carries the alias: declined alias_deleted
    data, _ = spoolkit.request(
        uid, body=vmr["joining_instructions"], start=start + timedelta(hours=1), sequence=1
    )
    spoolkit.wait_handled(spool, spoolkit.drop(spool / "inbox", data))
    spoolkit.wait_for(
        lambda: any(m.reason == "alias_deleted" for m in spoolkit.answers_for(spool, uid))
    )

    again = await client.post(
        f"/api/admin/v1/integrations/hq/aliases/{alias}/resend", headers=BEARER
    )
    assert (again.status, (await again.json())["error"]["code"]) == (404, "not_booked")
    gone = await client.delete("/api/admin/v1/integrations/hq/aliases/nothing@x", headers=BEARER)
    assert (gone.status, (await gone.json())["error"]["code"]) == (404, "unknown_alias")


async def test_reload_through_the_api(client: TestClient[Any, Any]) -> None:
    response = await client.post("/api/admin/v1/reload", headers=BEARER)
    # this service was started from a config object, not a file: said plainly
    assert (response.status, (await response.json())["error"]["code"]) == (400, "no_config_file")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/integrations"),
        ("GET", "/integrations/hq/decisions"),
        ("GET", "/integrations/hq/aliases"),
        ("DELETE", "/integrations/hq/aliases/x"),
        ("POST", "/integrations/hq/aliases/x/resend"),
        ("POST", "/reload"),
    ],
)
async def test_every_route_needs_the_admin_token(
    client: TestClient[Any, Any], method: str, path: str
) -> None:
    url = f"/api/admin/v1{path}"
    for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": ADMIN}):
        response = await client.request(method, url, headers=headers)
        assert response.status == 401, (headers, await response.text())
        assert (await response.json())["error"]["code"] == "admin_token_required"


async def test_the_console_needs_a_login_and_its_forms_the_csrf_token(
    client: TestClient[Any, Any], svc: service.Service
) -> None:
    anonymous = await client.get("/admin", allow_redirects=False)
    assert (anonymous.status, anonymous.headers["Location"]) == (303, "/admin/login?next=/admin")
    vmr, _ = await book(client, svc, datetime.now(UTC) + timedelta(days=1), "Console test")
    login = await client.post(
        "/admin/login", data={"token": ADMIN, "next": "/admin"}, allow_redirects=False
    )
    assert (login.status, login.headers["Location"]) == (303, "/admin")
    cookie = login.cookies["vmrsched_admin"]
    assert cookie["httponly"] and cookie["samesite"] == "Lax" and cookie["path"] == "/admin"
    # the cookie is for the console only: the API wants the bearer token
    assert (await client.get("/api/admin/v1/integrations")).status == 401

    page = await (await client.get("/admin", params={"q": "console"})).text()
    assert vmr["alias"] in page and "Console test" in page
    token = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    action = f"/admin/integrations/hq/aliases/{vmr['alias']}/delete"
    for form in ({}, {"csrf": "0" * 64}):
        refused = await client.post(action, data=form, allow_redirects=False)
        assert (refused.status, (await refused.json())["error"]["code"]) == (403, "csrf_failed")
    # without the confirmation, a page asks first and nothing is deleted
    asked = await client.post(action, data={"csrf": token}, allow_redirects=False)
    assert asked.status == 200 and 'name="confirm" value="yes"' in await asked.text()
    assert (await get(client, "/integrations/hq/aliases", q="console"))["aliases"][0][
        "status"
    ] != "deleted"
    done = await client.post(
        action, data={"csrf": token, "confirm": "yes", "q": "console"}, allow_redirects=False
    )
    assert done.status == 303 and "deleted" in urllib.parse.unquote_plus(done.headers["Location"])
    # back to the same view: the integration and the search stay
    assert "integration=hq" in done.headers["Location"] and "q=console" in done.headers["Location"]
    aliases = (await get(client, "/integrations/hq/aliases", q="console"))["aliases"]
    assert aliases[0]["status"] == "deleted"
    assert aliases[0]["reason"].startswith("deleted by admin token (session ")
    # a second click (or another admin first): the console says nothing was done
    again = await client.post(
        action, data={"csrf": token, "confirm": "yes", "q": "console"}, allow_redirects=False
    )
    assert again.status == 303 and "done=unknown_alias" in again.headers["Location"]
    shown = await (await client.get(again.headers["Location"])).text()
    assert f"{vmr['alias']} is not an alias that can be deleted" in shown


async def test_login_attempts_are_rate_limited(client: TestClient[Any, Any]) -> None:
    statuses = [
        (await client.post("/admin/login", data={"token": "guess"}, allow_redirects=False)).status
        for _ in range(7)
    ]
    assert statuses[:5] == [401] * 5 and statuses[-1] == 429


async def test_a_form_posted_from_another_sites_page_is_refused(
    client: TestClient[Any, Any],
) -> None:
    """Login CSRF: another site's page could post the admin token form (or any console or
    organizer form) with a browser's cookies; its Origin gives it away (DESIGN: 421
    host_not_allowed for an Origin the config does not name)."""
    evil = {"Origin": "https://evil.example"}
    for path in ("/admin/login", "/admin/reload", "/admin/logout"):
        posted = await client.post(path, data={"token": ADMIN}, headers=evil)
        assert posted.status == 421, path
        assert (await posted.json())["error"]["code"] == "host_not_allowed"
    own = {"Origin": f"http://127.0.0.1:{client.port}"}
    login = await client.post(
        "/admin/login", data={"token": ADMIN}, headers=own, allow_redirects=False
    )
    assert login.status == 303
    assert (await client.get("/admin/login", headers=evil)).status == 200  # reading is no act


async def test_wrong_admin_tokens_on_the_api_are_login_attempts_limited_and_logged(
    client: TestClient[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """docs/administration.md: attempts by either way are rate-limited and logged. A client
    out of attempts is refused even the right token, so guessing through the API is no
    faster than through the form."""
    url = "/api/admin/v1/service"
    wrong = {"Authorization": "Bearer not-the-admin-token-at-all"}
    with caplog.at_level(logging.WARNING, logger="vmrsched.admin"):
        statuses = [(await client.get(url, headers=wrong)).status for _ in range(7)]
    assert statuses[:5] == [401] * 5 and statuses[-1] == 429
    assert sum("admin token refused" in r.getMessage() for r in caplog.records) == 7
    refused = await client.get(url, headers=BEARER)
    assert refused.status == 429 and int(refused.headers["Retry-After"]) >= 1


async def login(client: TestClient[Any, Any]) -> None:
    response = await client.post(
        "/admin/login", data={"token": ADMIN, "next": "/admin"}, allow_redirects=False
    )
    assert response.status == 303


async def test_the_console_shows_only_its_own_notices(client: TestClient[Any, Any]) -> None:
    """`/admin?done=…` comes from a link anyone can send an admin: only our texts are shown,
    and an alias only when it has the shape of this integration's aliases."""
    await login(client)
    page = await (
        await client.get("/admin", params={"done": "Your session expired: go to evil"})
    ).text()
    assert "evil" not in page
    page = await (
        await client.get("/admin", params={"done": "deleted", "alias": "call evil.example"})
    ).text()
    assert "evil" not in page and "Alias deleted; its organizer is told." in page
    page = await (
        await client.get(
            "/admin", params={"done": "deleted", "alias": "vmr123456@video.example.com"}
        )
    ).text()
    assert "vmr123456@video.example.com deleted" in page
    page = await (await client.get("/admin", params={"done": "reload_invalid"})).text()
    assert 'role="alert"' in page and "Not reloaded" in page  # a failed reload is an error


async def test_a_decision_line_missing_a_field_does_not_break_the_console(
    client: TestClient[Any, Any], svc: service.Service
) -> None:
    path = svc.config.data_dir / "decisions" / "hq.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as log:
        log.write('{"subject": "Half a line", "outcome": "accepted"}\n')
    await login(client)
    response = await client.get("/admin")
    assert response.status == 200
    assert "Half a line" in await response.text()
    assert (await get(client, "/integrations/hq/decisions"))["decisions"][0][
        "subject"
    ] == "Half a line"


def _login_limits_service(tmp_path: Path, proxies: list[str]) -> service.Service:
    doc = {
        "server": {
            "data_dir": str(tmp_path / "data"),
            "admin_token_env": "ADMIN",
            "trusted_proxies": proxies,
        },
        "integrations": [
            {
                "name": "hq",
                "exchange": {"mailbox_name": "Video Room", "mailbox_email": "vmr@example.com"},
                "addin": {"token_validation": "none", "server_fqdn": "vmr.example.com"},
            }
        ],
    }
    return service.start(config.parse(doc, tmp_path, {"ADMIN": ADMIN}))


async def _attempt(client: TestClient[Any, Any], forwarded: str, token: str = "guess") -> int:
    response = await client.post(
        "/admin/login",
        data={"token": token},
        headers={"X-Forwarded-For": forwarded},
        allow_redirects=False,
    )
    return response.status


@pytest.mark.parametrize("trusted", [True, False])
async def test_login_limits_key_on_the_client_behind_a_trusted_proxy(
    tmp_path: Path, trusted: bool
) -> None:
    """Behind the shipped nginx every request comes from 127.0.0.1: with it trusted, one client's
    guesses lock out that client only; without, X-Forwarded-For is the client's own word and
    changes nothing."""
    svc = _login_limits_service(tmp_path, ["127.0.0.1"] if trusted else [])
    try:
        async with TestClient(TestServer(create_app(svc))) as client:
            guesses = [await _attempt(client, "203.0.113.5") for _ in range(5)]
            assert guesses == [401] * 5
            assert await _attempt(client, "203.0.113.5") == 429
            # a spoofed hop on the left is the client's own word: the proxy's hop counts
            assert await _attempt(client, "198.51.100.7, 203.0.113.5") == 429
            other = await _attempt(client, "203.0.113.6", ADMIN)
            assert other == (303 if trusted else 429)
    finally:
        svc.stop()


async def test_admins_see_the_conference_subject_never_the_meetings_own(tmp_path: Path) -> None:
    """The conference subject template is the privacy lever: the decisions (the log on disk
    too), the conferences, their search and the console show and search the rendered conference
    subject, and the store keeps the meeting's subject only as the templates render it. A
    decisions log written before (raw subjects) is shown through the template too."""
    legacy = {
        "time": "2026-01-01T09:00:00+00:00",
        "subject": "Legacy secret plans",
        "organizer": "ann@example.com",
        "outcome": "declined",
        "reason": "invalid_alias_id",
        "correlation_id": "c-legacy",
    }
    log = tmp_path / "data" / "decisions" / "hq.jsonl"
    log.parent.mkdir(parents=True)
    log.write_text(json.dumps(legacy) + "\n")
    doc = {
        "server": {"data_dir": str(tmp_path / "data"), "admin_token_env": "ADMIN"},
        "integrations": [
            {
                "name": "hq",
                "exchange": {"mailbox_name": "Video Room", "mailbox_email": "vmr@example.com"},
                "addin": {"token_validation": "none", "server_fqdn": "vmr.example.com"},
                "spool": {"poll_interval_seconds": 0.05},
                "single_use": {
                    "conference_subject_template": "Video meeting of {{organizer_name}}",
                    # the name is the conference's on Pexip: kept without the subject too
                    "conference_name_template": "{{organizer_name}} {{numeric_alias}}",
                },
            }
        ],
    }
    svc = service.start(config.parse(doc, tmp_path, {"ADMIN": ADMIN}))
    try:
        spoolkit.wait_for(lambda: svc.ctx.status.state("hq") == "running")
        async with TestClient(TestServer(create_app(svc))) as client:
            start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
            vmr, _ = await book(client, svc, start, "Secret merger talks")

            found = (await get(client, "/integrations/hq/decisions"))["decisions"]
            assert [d["subject"] for d in found] == [
                "Video meeting of Olga Organizer",
                "Video meeting of ann@example.com",
            ]
            assert (await get(client, "/integrations/hq/decisions", q="secret"))["decisions"] == []
            olga = await get(client, "/integrations/hq/decisions", q="meeting olga")
            assert [d["alias"] for d in olga["decisions"]] == [vmr["alias"]]

            aliases = (await get(client, "/integrations/hq/aliases"))["aliases"]
            assert [a["subject"] for a in aliases] == ["Video meeting of Olga Organizer"]
            assert (await get(client, "/integrations/hq/aliases", q="merger"))["aliases"] == []
            assert (await get(client, "/integrations/hq/aliases", q="video olga"))["aliases"]

            login = await client.post(
                "/admin/login", data={"token": ADMIN, "next": "/admin"}, allow_redirects=False
            )
            assert login.status == 303
            page = await (await client.get("/admin")).text()
            assert "Video meeting of Olga Organizer" in page
            assert "Secret" not in page and "secret" not in page
    finally:
        svc.stop()
    on_disk = log.read_text()
    assert "Secret merger" not in on_disk  # kept only as the template renders it
    # nor in the store (the mails to the organizer carry it, as the organizer wrote it)
    for path in config.store_dir(tmp_path / "data", "hq").rglob("*"):
        if path.is_file():
            assert b"Secret merger" not in path.read_bytes(), path


async def test_deleting_a_deleted_alias_changes_nothing(
    client: TestClient[Any, Any], svc: service.Service, caplog: pytest.LogCaptureFixture
) -> None:
    """A second delete of the same alias is 404 `unknown_alias` (openapi.yaml's 404 for this
    route; the alias is no longer one that can be deleted): nothing is written, logged or sent
    again, and the answer says it was deleted already."""
    vmr, _ = await book(client, svc, datetime.now(UTC) + timedelta(days=1), "Twice deleted")
    url = f"/api/admin/v1/integrations/hq/aliases/{vmr['alias']}"
    with caplog.at_level(logging.WARNING, logger="vmrsched.allocator"):
        first = await client.delete(url, headers=BEARER)
        assert first.status == 200
        again = await client.delete(url, headers=BEARER)
    error = (await again.json())["error"]
    assert (again.status, error["code"]) == (404, "unknown_alias")
    assert "deleted already" in error["message"]
    deletions = [r for r in caplog.records if "deleted by" in r.getMessage()]
    assert len(deletions) == 1
    messages = await get(client, "/integrations/hq/messages")
    queued = [m for m in messages["queued"] + messages["failed"] if m["outcome"] == "deleted"]
    sent = [m for m in spoolkit.outbox(spool_of(svc)) if m.outcome == "deleted"]
    assert len(queued) + len(sent) == 1  # one organizer notice, from the first delete
    aliases = (await get(client, "/integrations/hq/aliases", q="twice"))["aliases"]
    assert aliases[0]["deleted"] == (await first.json())["alias"]["deleted"]


def hq_toml(tmp_path: Path) -> str:
    """A valid config file's text: one integration, "hq", its admin token from $ADMIN."""
    return (
        f'[server]\ndata_dir = "{tmp_path / "data"}"\nadmin_token_env = "ADMIN"\n'
        '[[integrations]]\nname = "hq"\n[integrations.exchange]\nmailbox_name = "Room"\n'
        'mailbox_email = "vmr@example.com"\n[integrations.addin]\ntoken_validation = "none"\n'
    )


@contextlib.asynccontextmanager
async def hq_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Path, str, service.Service, TestClient[Any, Any]]]:
    """The service started from a file holding hq_toml, and a client of its app: the file's
    path, its valid text, the service, the client."""
    monkeypatch.setenv("ADMIN", ADMIN)
    path = tmp_path / "vmrsched.toml"
    good = hq_toml(tmp_path)
    path.write_text(good)
    svc = service.start(config.load(path))
    try:
        async with TestClient(TestServer(create_app(svc))) as client:
            yield path, good, svc, client
    finally:
        svc.stop()


async def test_a_reload_of_an_invalid_file_is_409_config_invalid_with_every_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DESIGN keeps 503 for an integration that does not run or storage that is unavailable;
    an invalid file is a request that cannot be carried out in the state the file is in
    (RFC 9110 15.5.10, 409 Conflict): fixing the file and asking again succeeds. Every problem
    is named with its key path, and the running config stays."""
    async with hq_service(tmp_path, monkeypatch) as (path, good, svc, client):
        path.write_text(
            good + '[integrations.single_use]\nalias_prefix = "ABCDEFGHIJ"\n'
            "alias_suffix_length = 3\n"
        )
        refused = await client.post("/api/admin/v1/reload", headers=BEARER)
        error = (await refused.json())["error"]
        assert (refused.status, error["code"]) == (409, "config_invalid")
        assert "integrations[0].single_use.alias_prefix" in error["message"]
        assert "integrations[0].single_use.alias_suffix_length" in error["message"]
        assert svc.integration_names() == ["hq"]
        path.write_text(good)
        applied = await client.post("/api/admin/v1/reload", headers=BEARER)
        assert applied.status == 200


async def test_a_second_invalid_reload_names_the_files_mistakes_now(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The re-check fixed one mistake and made another: the answer and the config_invalid
    alarm still named the first. Both say what the file holds now (the alarm keeps the time it
    was first raised)."""
    async with hq_service(tmp_path, monkeypatch) as (path, good, svc, client):
        path.write_text(good.replace('name = "hq"', 'name = "hq"\ntimezone = "Nowhere/Land"'))
        first = await (await client.post("/api/admin/v1/reload", headers=BEARER)).json()
        assert "timezone" in first["error"]["message"]
        [alarm] = svc.ctx.alarms.active("service")
        path.write_text(good + '[integrations.single_use]\nalias_prefix = "ABCDEFGHIJ"\n')
        second = await client.post("/api/admin/v1/reload", headers=BEARER)
        message = (await second.json())["error"]["message"]
        assert second.status == 409
        assert "alias_prefix" in message and "timezone" not in message
        [now] = svc.ctx.alarms.active("service")
        assert "alias_prefix" in now.message and "timezone" not in now.message
        assert now.raised_at == alarm.raised_at


HIDDEN = "\u202egnitteem\u202c zero\u200bwidth \u2066isolate"


async def test_the_console_isolates_and_shows_format_characters_of_subjects(
    client: TestClient[Any, Any], svc: service.Service
) -> None:
    """A subject is the attacker's text: in the console its direction is isolated from the
    cells around it (<bdi>, as the HTML standard describes for text of unknown direction) and
    the characters that reorder or hide text are shown by their code points, never applied."""
    vmr, _ = await book(client, svc, datetime.now(UTC) + timedelta(days=1), f"Bidi {HIDDEN}")
    unused = await (await client.post("/api/addin/v1/hq/single-use-vmrs", json={})).json()
    dialled = {"local_alias": f'"x{HIDDEN}" <sip:{unused["alias"]}>', "call_direction": "dial_in"}
    refused = await client.get("/policy/v1/service/configuration", params=dialled, headers=NODE)
    assert (await refused.json())["action"] == "reject"  # reserved, not booked: refused
    await login(client)
    page = await (await client.get("/admin", params={"q": "bidi"})).text()
    assert vmr["alias"] in page
    for hidden in "\u202e\u202c\u200b\u2066":
        assert hidden not in page
        assert f"U+{ord(hidden):04X}" in page
    assert "<code><bdi>&#34;x" in page  # the last alias a caller dialled, refused
    cells = page.count('<td data-label="Subject"><bdi>')
    assert cells == 2  # the conference and its decision
    assert page.count('<td data-label="Organizer"><bdi>olga@example.com</bdi>') == 2


async def test_a_quarantined_request_shows_as_quarantined_with_its_cause(
    client: TestClient[Any, Any], svc: service.Service
) -> None:
    """A request nobody can be answered for is set aside unanswered (the spool's failed/): the
    console says so, not "Declined", with its cause (as `vmrsched decisions` prints it), and
    says where such requests are kept, since its failed messages are our outgoing ones."""
    spool = spool_of(svc)
    name = spoolkit.drop(spool / "inbox", b"this is not a calendar", suffix=".ics")
    spoolkit.wait_handled(spool, name)
    assert (spool / "failed" / name).exists()
    spoolkit.wait_for(lambda: (svc.config.data_dir / "decisions" / "hq.jsonl").exists())
    await login(client)
    page = await (await client.get("/admin", params={"q": "quarantined"})).text()
    row = page.split('<span class="status status-quarantined">quarantined</span>', 1)[1]
    row = row.split("</tr>", 1)[0]
    title = row.split('title="', 1)[1].split('"', 1)[0]
    assert title.startswith("Quarantined") and "Declined" not in title
    assert "not an iCalendar object" in row  # the cause
    assert "failed/" in page and "as quarantined" in page  # where such requests are


async def test_an_admins_deletion_is_a_line_of_the_decisions_log(
    client: TestClient[Any, Any], svc: service.Service
) -> None:
    """The decisions log outlives a store's damage; `recover` reads a deletion there."""
    vmr, uid = await book(client, svc, datetime.now(UTC) + timedelta(days=1), "Logged delete")
    url = f"/api/admin/v1/integrations/hq/aliases/{vmr['alias']}"
    assert (await client.delete(url, headers=BEARER)).status == 200
    [entry] = (await get(client, "/integrations/hq/decisions", q="deleted admin"))["decisions"]
    assert (entry["alias"], entry["meeting_uid"], entry["subject"]) == (
        vmr["alias"],
        uid,
        "Logged delete",
    )
    assert entry["detail"].startswith("deleted by admin token")


async def test_a_reload_from_the_console_names_the_keys_that_wait_for_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The console's reload says what the API's `restart_needed` says: which [server] keys the
    file changed that the running service keeps until a restart."""
    monkeypatch.setenv("ADMIN", ADMIN)
    path = tmp_path / "vmrsched.toml"
    body = (
        '[server]\ndata_dir = "data"\nadmin_token_env = "ADMIN"\nmax_body_bytes = {}\n'
        '[[integrations]]\nname = "hq"\n[integrations.exchange]\nmailbox_name = "Video Room"\n'
        'mailbox_email = "vmr@example.com"\n[integrations.addin]\ntoken_validation = "none"\n'
    )
    path.write_text(body.format(65536))
    running = service.start(config.load(path))
    try:
        async with TestClient(TestServer(create_app(running))) as client:
            await login(client)
            page = await (await client.get("/admin")).text()
            csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
            path.write_text(body.format(2048))
            reloaded = await client.post(
                "/admin/reload", data={"csrf": csrf}, allow_redirects=False
            )
            assert reloaded.status == 303
            assert "done=reloaded_restart" in reloaded.headers["Location"]
            page = await (await client.get(reloaded.headers["Location"])).text()
            assert (
                "Configuration reloaded. These keys take effect after a restart (what runs keeps "
                "the values it started with until then): server.max_body_bytes." in page
            )
            answer = await client.post(
                "/api/admin/v1/reload", headers={"Authorization": f"Bearer {ADMIN}"}
            )
            assert (await answer.json())["restart_needed"] == ["server.max_body_bytes"]
    finally:
        running.stop()
