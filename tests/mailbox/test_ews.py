"""The EWS backend, through the running service, against the fake Exchange over real HTTP:
the rules-table cases reach the same outcomes as with the spool, organizer updates go through
impersonation, cancellations take meetings off the room's calendar, faults raise
exchange_unreachable and lose nothing, and the recovery tool re-binds lost meetings."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests import spoolkit
from tests.backups import restore_without
from tests.configs import PW, ROOM, ews_config, reserve_alias, stored_record, write_toml
from tests.fakes.ews_server import FakeExchange, FakeItem
from tests.fakes.threaded import ThreadedServer
from vmrsched import config, recovery, service
from vmrsched.actors.supervision import RestartPolicy
from vmrsched.mailbox.backends import make_gateway
from vmrsched.messages import answers
from vmrsched.rules.meetings import Meeting
from vmrsched.store import Store
from vmrsched.telemetry import Metrics

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Env:
    fake: FakeExchange
    server: ThreadedServer
    svc: service.Service
    cfg: config.Config

    def count(self, outcome: str, reason: str) -> float:
        value = self.svc.ctx.metrics.registry.get_sample_value(
            "vmrsched_meeting_requests_total",
            {"integration": "onprem", "outcome": outcome, "reason": reason},
        )
        return value or 0.0

    def reserve(self) -> dict[str, Any]:
        spoolkit.wait_for(lambda: self.svc.ctx.status.state("onprem") == "running")
        ref = self.svc.ctx.registry.get("onprem", "allocator")
        record: dict[str, Any] = reserve_alias(ref)
        return record

    def send(self, meeting: Meeting) -> FakeItem:
        item = self.fake.deliver(ROOM, meeting)
        spoolkit.wait_for(lambda: item.id not in self.fake.mailbox(ROOM).inbox, timeout=20)
        notifier = self.svc.ctx.registry.get("onprem", "notifier")
        spoolkit.wait_for(lambda: notifier.proxy().pending().get(timeout=5) == 0)
        return item

    def replies(self, uid: str) -> list[FakeItem]:
        return [r for r in self.fake.replies(ROOM) if r.meeting and r.meeting.uid == uid]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    fake = FakeExchange()
    server = ThreadedServer(fake.app()).start()
    cfg = ews_config(tmp_path, server.url)
    # outages back off for at most a second here: no test waits on production backoff
    svc = service.start(cfg, policy=RestartPolicy(mailbox_max=1.0))
    try:
        yield Env(fake, server, svc, cfg)
    finally:
        svc.stop()
        server.stop()


def meeting(
    uid: str,
    body: str,
    *,
    days: float = 1,
    sequence: int = 0,
    method: str = "REQUEST",
    rrule: str | None = None,
    recurrence_id: datetime | None = None,
    start: datetime | None = None,
) -> Meeting:
    start = start or datetime.now(UTC).replace(microsecond=0) + timedelta(days=days)
    return Meeting(
        uid=uid,
        method=method,
        start=start,
        end=start + timedelta(minutes=30),  # type: ignore[arg-type]
        sequence=sequence,
        rrule=rrule,
        recurrence_id=recurrence_id,
        organizer_name="Olga Organizer",
        organizer_email="olga@example.com",
        subject="Weekly sync",
        html_body=body,
        attendees=("bob@example.com",),
    )


def pxps(record: dict[str, Any]) -> str:
    return f"<p>Join</p><p>PXPS:-{record['alias_id']}#</p>"


def test_rules_through_ews_match_the_spool_outcomes(env: Env) -> None:
    env.send(meeting("no-token", "<p>nothing</p>"))
    [reply] = env.replies("no-token")
    assert reply.response == "Decline" and "no valid video meeting reference" in reply.body
    assert env.count("declined", "invalid_alias_id") == 1

    rec = env.reserve()
    env.send(meeting("single", pxps(rec)))
    [reply] = env.replies("single")
    assert reply.response == "Accept" and rec["alias"] in reply.body
    assert env.count("accepted", "new_single") == 1
    calendar = env.fake.mailbox(ROOM).calendar.values()
    assert any(i.meeting and i.meeting.uid == "single" for i in calendar)

    env.send(meeting("single", pxps(rec), days=2, sequence=1))
    assert env.count("accepted", "edited_single") == 1
    env.send(meeting("single", pxps(rec), sequence=0))  # outdated: removed, no reply
    assert env.count("ignored", "outdated") == 1 and len(env.replies("single")) == 2

    env.send(meeting("copy", pxps(rec)))
    assert env.count("declined", "alias_conflict") == 1

    rec2 = env.reserve()
    first = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
    env.send(meeting("series", pxps(rec2), rrule="FREQ=WEEKLY;COUNT=6", start=first))
    assert env.count("accepted", "new_recurring") == 1
    moved = first + timedelta(weeks=2)
    env.send(
        meeting(
            "series", pxps(rec2), start=moved + timedelta(hours=2), recurrence_id=moved, sequence=1
        )
    )
    assert env.count("accepted", "edited_occurrence") == 1
    env.send(meeting("series", pxps(rec2), rrule="FREQ=WEEKLY;COUNT=10", start=first, sequence=2))
    assert env.count("accepted", "edited_recurring") == 1
    env.send(meeting("past", pxps(env.reserve()), days=-3))
    assert env.count("declined", "single_in_past") == 1
    env.send(meeting("past-series", pxps(env.reserve()), days=-30, rrule="FREQ=DAILY;COUNT=2"))
    assert env.count("declined", "recurring_in_past") == 1


def test_cancellation_removes_the_meeting_and_the_alias(env: Env) -> None:
    rec = env.reserve()
    env.send(meeting("to-cancel", pxps(rec)))
    assert any(
        i.meeting and i.meeting.uid == "to-cancel" for i in env.fake.mailbox(ROOM).calendar.values()
    )
    env.send(meeting("to-cancel", pxps(rec), sequence=1, method="CANCEL"))
    assert env.count("ignored", "cancelled") == 1
    assert not any(
        i.meeting and i.meeting.uid == "to-cancel" for i in env.fake.mailbox(ROOM).calendar.values()
    )
    assert "RemoveItem" not in env.fake.requests  # (counted by element, not operation)
    env.send(meeting("reuse", pxps(rec)))
    assert env.count("declined", "alias_deleted") == 1


def test_a_cancellation_sent_by_someone_else_keeps_the_meeting_and_the_alias(env: Env) -> None:
    rec = env.reserve()
    env.send(meeting("owned", pxps(rec)))
    cancel = meeting("owned", pxps(rec), sequence=1, method="CANCEL")
    item = env.fake.deliver(ROOM, cancel, sender="mallory@evil.example")  # names Olga
    spoolkit.wait_for(lambda: item.id not in env.fake.mailbox(ROOM).inbox, timeout=20)
    assert env.count("ignored", "not_organizer") == 1
    assert any(
        i.meeting and i.meeting.uid == "owned" for i in env.fake.mailbox(ROOM).calendar.values()
    )
    ref = env.svc.ctx.registry.get("onprem", "allocator")
    assert stored_record(ref, rec["alias_id"])["status"] == "bound"
    assert len(env.replies("owned")) == 1  # the accept, and nothing for the refusal
    env.send(cancel)  # Olga's own
    assert env.count("ignored", "cancelled") == 1
    assert stored_record(ref, rec["alias_id"])["status"] == "deleted"


def test_placeholder_meeting_gets_an_organizer_update_by_impersonation(env: Env) -> None:
    token = "TOK:-00000000-0000-4000-8000-0000000000ee#"
    env.send(meeting("tok", f"<p>Agenda</p><p>{token}</p>"))
    [reply] = env.replies("tok")
    assert reply.response == "Accept", reply.body
    spoolkit.wait_for(
        lambda: any(i.updates_sent for i in env.fake.mailbox("olga@example.com").calendar.values())
    )
    [own] = env.fake.mailbox("olga@example.com").calendar.values()
    assert own.updates_sent == 1 and "PXPS:-" in own.body and token not in own.body
    assert "Agenda" in own.body
    assert "olga@example.com" in env.fake.impersonated


def test_a_plain_message_is_set_aside_without_a_reply(env: Env) -> None:
    env.send(meeting("first", "<p>x</p>"))  # the subscription is up and caught up
    before = len(env.fake.replies(ROOM))
    item = FakeItem(
        env.fake.new_id("in"), "Message", None, "Out of office", "<p>away</p>", "ann@example.com"
    )
    env.fake.put_in_inbox(ROOM, item)  # announced by a new-mail event
    spoolkit.wait_for(lambda: item.id not in env.fake.mailbox(ROOM).inbox)
    assert item in env.fake.mailbox(ROOM).deleted  # moved aside to Deleted Items
    env.send(meeting("after", "<p>y</p>"))  # processed in order after the plain mail
    assert len(env.fake.replies(ROOM)) == before + 1  # only the meeting was answered
    assert not any(m.recipients == ("ann@example.com",) for m in env.fake.replies(ROOM))


def test_every_ews_request_is_counted(env: Env) -> None:
    """Every request Exchange received is counted once its answer is back. The poller keeps
    polling, so a request may be on its way while the two are compared: they must agree
    whenever none is."""
    env.send(meeting("counted", "<p>no token</p>"))
    registry = env.svc.ctx.metrics.registry

    def counted() -> tuple[float, int]:
        """(requests counted, requests Exchange received), read in that order: a request is
        received before its answer is counted, so the second is never below the first."""
        total = sum(
            registry.get_sample_value(
                "vmrsched_exchange_requests_total",
                {"integration": "onprem", "operation": op, "result": "ok"},
            )
            or 0
            for op in set(env.fake.requests)
        )
        return total, len(env.fake.requests)

    def agree() -> bool:
        total, received = counted()
        assert total <= received  # never one counted that Exchange did not see
        return total == received > 0

    spoolkit.wait_for(agree, timeout=10)


def test_faults_raise_the_alarm_and_lose_nothing(env: Env) -> None:
    env.send(meeting("warm", "<p>warm up</p>"))
    env.fake.fail_next = ["503", "busy", "503"]
    first = env.fake.deliver(ROOM, meeting("during-faults", "<p>x</p>"))
    spoolkit.wait_for(lambda: first.id not in env.fake.mailbox(ROOM).inbox, timeout=30)
    # now Exchange goes away entirely
    env.server.stop()
    spoolkit.wait_for(
        lambda: (
            ("onprem", "exchange_unreachable")
            in {(a.integration, a.name) for a in env.svc.ctx.alarms.active()}
        ),
        timeout=20,
    )
    waiting = [env.fake.deliver(ROOM, meeting(f"while-down-{i}", "<p>y</p>")) for i in range(3)]
    assert env.svc.ctx.status.state("onprem") == "running"  # backing off, not crashing
    env.server = ThreadedServer(env.fake.app(), port=env.server.port).start()
    spoolkit.wait_for(lambda: not env.fake.mailbox(ROOM).inbox, timeout=90)
    spoolkit.wait_for(
        lambda: (
            ("onprem", "exchange_unreachable")
            not in {(a.integration, a.name) for a in env.svc.ctx.alarms.active()}
        ),
        timeout=90,
    )
    for item in (first, *waiting):
        assert item.meeting is not None
        spoolkit.wait_for(lambda item=item: bool(env.replies(item.meeting.uid)), timeout=30)


def test_recovery_rebinds_meetings_missing_from_the_store(tmp_path: Path) -> None:
    fake = FakeExchange()
    server = ThreadedServer(fake.app()).start()
    cfg = ews_config(tmp_path, server.url)
    svc = service.start(cfg)
    try:
        env = Env(fake, server, svc, cfg)
        env.send(meeting("kept", pxps(env.reserve())))
        env.send(
            meeting(
                "lost",
                "<p>TOK:-00000000-0000-4000-8000-0000000000aa#</p>",
                days=3,
                rrule="FREQ=WEEKLY;COUNT=4",
            )
        )
    finally:
        svc.stop()
    try:
        integ = cfg.integrations[0]
        store_dir = cfg.data_dir / "store" / "onprem"
        lost = restore_without(store_dir, "lost")

        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "vmrsched",
                "recover",
                "onprem",
                "--dry-run",
                "--config",
                str(_write_toml(tmp_path, cfg, server.url)),
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=_env(),
        )
        assert out.returncode == 0, out.stderr
        assert "would_bind" in out.stdout and "lost" in out.stdout
        assert "already_bound" in out.stdout

        store = Store(store_dir)
        gateway = make_gateway(integ, cfg.data_dir, Metrics())
        updates_before = sum(
            i.updates_sent for i in fake.mailbox("olga@example.com").calendar.values()
        )
        done = recovery.recover(integ, gateway, store, datetime.now(UTC))
        gateway.close()
        actions = {d.uid: d.action for d in done}
        assert actions == {"kept": "already_bound", "lost": "bound"}
        rebound = store.by_meeting_uid("lost")
        assert rebound is not None and rebound["alias_id"] != lost["alias_id"]
        schedule = rebound["schedule"]
        assert "WEEKLY" in schedule  # the series came back as a series
        store.close()
        after = sum(i.updates_sent for i in fake.mailbox("olga@example.com").calendar.values())
        assert after == updates_before + 1
    finally:
        server.stop()


def _write_toml(tmp_path: Path, cfg: config.Config, url: str) -> Path:
    return write_toml(cfg.data_dir, url)


def _env() -> dict[str, str]:
    import os

    return {**os.environ, **PW}


# --- OAuth (msal against a fake identity platform over TLS) -----------------------------------


@dataclass
class OAuthEnv:
    platform: Any
    platform_server: ThreadedServer
    fake: FakeExchange
    server: ThreadedServer
    ca_file: Path


@pytest.fixture
def oauth(tmp_path: Path) -> Iterator[OAuthEnv]:
    from tests.fakes.identity_platform import IdentityPlatform, server_context, tls_files

    cert, key = tls_files(tmp_path)
    platform = IdentityPlatform()
    platform_server = ThreadedServer(platform.app(), ssl_context=server_context(cert, key))
    platform_server.start()
    platform.base = platform_server.url
    fake = FakeExchange(bearer=platform.valid)
    server = ThreadedServer(fake.app()).start()
    try:
        yield OAuthEnv(platform, platform_server, fake, server, cert)
    finally:
        server.stop()
        platform_server.stop()


def oauth_config(
    tmp_path: Path, env: OAuthEnv, mode: str, admin: bool = False, **exchange: Any
) -> config.Config:
    """An OAuth EWS integration; `exchange` keys replace the defaults (None leaves one out)."""
    base = ews_config(tmp_path, env.server.url)
    authority = env.platform.authority
    redirect = "http://127.0.0.1:8080/admin/platform/msexchangeconnector/oauth_redirect/"
    doc: dict[str, Any] = {
        "server": {
            "listen": "127.0.0.1:0",
            "data_dir": str(tmp_path / "data"),
            **({"admin_token_env": "VMRSCHED_ADMIN_TOKEN"} if admin else {}),
        },
        "integrations": [
            {
                "name": "onprem",
                "backend": "ews",
                "timezone": "Europe/London",
                "exchange": {
                    "ews_url": base.integrations[0].exchange.ews_url,
                    "authentication": mode,
                    "service_account_username": "svc-vmr@contoso.example",
                    "oauth_client_id": env.platform.client_id,
                    "oauth_client_secret_env": "VMRSCHED_OAUTH_SECRET",
                    "oauth_token_endpoint": f"{authority}/oauth2/v2.0/token",
                    "oauth_authorization_endpoint": f"{authority}/oauth2/v2.0/authorize",
                    "oauth_redirect_uri": redirect,
                    "tls_ca_file": str(env.ca_file),
                    "mailbox_name": "Video Room",
                    "mailbox_email": ROOM,
                    "poll_interval_seconds": 0.05,
                },
                "addin": {"token_validation": "none"},
            }
        ],
    }
    settings = doc["integrations"][0]["exchange"]
    if mode == "oauth_app":  # client credentials: no service account (a user alone is half a pair)
        del settings["service_account_username"]
    settings.update(exchange)
    for key in [k for k, v in exchange.items() if v is None]:
        del settings[key]
    environ = {
        "VMRSCHED_OAUTH_SECRET": env.platform.client_secret,
        "VMRSCHED_ADMIN_TOKEN": "a" * 40,
    }
    return config.parse(doc, tmp_path, environ)


def test_oauth_app_uses_client_credentials_and_retries_once_on_expiry(
    tmp_path: Path, oauth: OAuthEnv
) -> None:
    cfg = oauth_config(tmp_path, oauth, "oauth_app")
    oauth.fake.app_only = True  # Exchange wants ExchangeImpersonation with such a token
    svc = service.start(cfg)
    try:
        env = Env(oauth.fake, oauth.server, svc, cfg)
        env.send(meeting("oauth-1", "<p>no token</p>"))
        assert env.replies("oauth-1")
        assert len(oauth.fake.impersonated) == len(oauth.fake.requests)
        assert oauth.platform.grants.count("client_credentials") == 1
        assert "Bearer" in oauth.fake.auth_seen and "Basic" not in oauth.fake.auth_seen
        oauth.platform.expire_all()  # Exchange now refuses the cached token
        env.send(meeting("oauth-2", "<p>no token</p>"))
        assert env.replies("oauth-2")
        assert oauth.platform.grants.count("client_credentials") == 2  # one refresh, no more
        assert not svc.ctx.alarms.active("onprem")
    finally:
        svc.stop()


def test_oauth_delegated_signs_in_at_the_configured_authorization_endpoint(
    tmp_path: Path, oauth: OAuthEnv
) -> None:
    """oauth_authorization_endpoint is where the admin's browser goes (AD FS, a proxy in front
    of the identity provider); left out, the authority's own endpoint is used."""
    from vmrsched.mailbox.ews_auth import DelegatedTokens

    redirect = "http://127.0.0.1:8080/admin/platform/msexchangeconnector/oauth_redirect/"
    elsewhere = "https://sso.contoso.example/adfs/oauth2/authorize/"
    cfg = oauth_config(tmp_path, oauth, "oauth_delegated", oauth_authorization_endpoint=elsewhere)
    tokens = DelegatedTokens(cfg.integrations[0].exchange, tmp_path / "a.json")
    url = tokens.start_sign_in(redirect)
    assert url.startswith(f"{elsewhere}?"), url
    assert "state=" in url and "code_challenge=" in url and "client_id=" in url
    plain = oauth_config(tmp_path, oauth, "oauth_delegated", oauth_authorization_endpoint=None)
    tokens = DelegatedTokens(plain.integrations[0].exchange, tmp_path / "b.json")
    assert tokens.start_sign_in(redirect).startswith(
        f"{oauth.platform.authority}/oauth2/v2.0/authorize?"
    )


async def test_oauth_delegated_browser_sign_in_then_refresh_failure_alarm(
    tmp_path: Path, oauth: OAuthEnv
) -> None:
    import asyncio
    import os
    import stat
    from urllib.parse import urlsplit

    import requests
    from aiohttp.test_utils import TestClient, TestServer

    from vmrsched.http.app import create_app

    cfg = oauth_config(tmp_path, oauth, "oauth_delegated", admin=True)
    svc = service.start(cfg)
    try:
        # Before the sign-in: the integration runs but cannot reach Exchange, and says why.
        await asyncio.to_thread(
            spoolkit.wait_for,
            lambda: (
                ("onprem", SIGN_IN) in {(a.integration, a.name) for a in svc.ctx.alarms.active()}
            ),
        )
        async with TestClient(TestServer(create_app(svc))) as client:
            sign_in = "/admin/integrations/onprem/sign-in"
            assert (await client.get(sign_in, allow_redirects=False)).status == 401
            login = await client.post(
                "/admin/login", data={"token": "b" * 40, "next": sign_in}, allow_redirects=False
            )
            assert login.status == 401  # wrong token
            login = await client.post(
                "/admin/login", data={"token": "a" * 40, "next": sign_in}, allow_redirects=False
            )
            assert login.status == 303 and login.headers["Location"] == sign_in
            start = await client.get(sign_in, allow_redirects=False)
            assert start.status == 302
            authorize = start.headers["Location"]
            assert authorize.startswith(f"{oauth.platform.authority}/oauth2/v2.0/authorize?")
            # the admin's browser at the identity provider, which sends it back with a code
            answer = await asyncio.to_thread(
                requests.get,
                authorize,
                verify=str(oauth.ca_file),
                allow_redirects=False,
                timeout=10,
            )
            back = urlsplit(answer.headers["Location"])
            assert back.path == "/admin/platform/msexchangeconnector/oauth_redirect/"
            # the callback forwarded to another admin's browser: refused, nothing redeemed
            async with TestClient(TestServer(create_app(svc))) as other:
                await other.post("/admin/login", data={"token": "a" * 40}, allow_redirects=False)
                refused = await other.get(f"{back.path}?{back.query}")
                assert refused.status == 400
                assert "not started in this browser" in await refused.text()
            assert "authorization_code" not in oauth.platform.grants
            done = await client.get(f"{back.path}?{back.query}")
            page = await done.text()
            assert done.status == 200 and "svc-vmr@contoso.example" in page, page
        cache = cfg.data_dir / "oauth" / "onprem.json"
        assert stat.S_IMODE(os.stat(cache).st_mode) == 0o600
        assert "authorization_code" in oauth.platform.grants

        env = Env(oauth.fake, oauth.server, svc, cfg)
        await asyncio.to_thread(env.send, meeting("delegated", "<p>no token</p>"))
        assert env.replies("delegated") and "Bearer" in oauth.fake.auth_seen
        await asyncio.to_thread(
            spoolkit.wait_for,
            lambda: (
                ("onprem", SIGN_IN)
                not in {(a.integration, a.name) for a in svc.ctx.alarms.active()}
            ),
        )

        # The refresh token stops working (revoked, expired): the alarm asks for a new sign-in.
        oauth.platform.refuse_refresh = True
        oauth.platform.expire_all()
        await asyncio.to_thread(
            spoolkit.wait_for,
            lambda: (
                ("onprem", SIGN_IN) in {(a.integration, a.name) for a in svc.ctx.alarms.active()}
            ),
        )
    finally:
        svc.stop()


SIGN_IN = "service_account_sign_in_required"


@pytest.mark.parametrize("password, answered", [("s3cret", True), ("wrong", False)])
def test_ntlm_service_account(tmp_path: Path, password: str, answered: bool) -> None:
    fake = FakeExchange(ntlm=True)
    server = ThreadedServer(fake.app()).start()
    base = ews_config(tmp_path, server.url)
    integ = base.integrations[0]
    doc = {
        "server": {"listen": "127.0.0.1:0", "data_dir": str(tmp_path / "data")},
        "integrations": [
            {
                "name": "onprem",
                "backend": "ews",
                "exchange": {
                    "ews_url": integ.exchange.ews_url,
                    "authentication": "ntlm",
                    "service_account_username": "CONTOSO\\\\svc-vmr",
                    "service_account_password_env": "PW",
                    "mailbox_name": "Room",
                    "mailbox_email": ROOM,
                    "poll_interval_seconds": 0.05,
                },
                "addin": {"token_validation": "none"},
            }
        ],
    }
    cfg = config.parse(doc, tmp_path, {"PW": password})
    svc = service.start(cfg)
    try:
        item = fake.deliver(ROOM, meeting("ntlm", "<p>no token</p>"))
        if answered:
            spoolkit.wait_for(lambda: item.id not in fake.mailbox(ROOM).inbox)
            assert fake.ntlm_users and fake.ntlm_users[0].lower() == "contoso\\\\svc-vmr"
        else:
            spoolkit.wait_for(
                lambda: (
                    ("onprem", "exchange_unreachable")
                    in {(a.integration, a.name) for a in svc.ctx.alarms.active()}
                )
            )
            assert item.id in fake.mailbox(ROOM).inbox and not fake.ntlm_users
    finally:
        svc.stop()
        server.stop()


def _check_online(tmp_path: Path, url: str, *flags: str) -> subprocess.CompletedProcess[str]:
    path = _write_toml(tmp_path, ews_config(tmp_path, url), url)
    return subprocess.run(
        [sys.executable, "-m", "vmrsched", "check-config", "--online", str(path), *flags],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=_env(),
    )


ORGANIZER = "olga@example.com"


@pytest.mark.parametrize(
    "scope",
    [None, {ROOM, ORGANIZER}],
    ids=["role without a scope", "role scoped to the room and the organizers"],
)
def test_the_documented_rights_are_enough_and_no_more_is_used(
    tmp_path: Path, scope: set[str] | None
) -> None:
    """ApplicationImpersonation over the room and the organizers, nothing else: the room is
    opened by impersonation like the organizers' mailboxes, every request carries the header,
    and FullAccess (which the set-up never grants) is never needed."""
    fake = FakeExchange()
    fake.impersonation_scope = scope
    server = ThreadedServer(fake.app()).start()
    cfg = ews_config(tmp_path, server.url)
    svc = service.start(cfg, policy=RestartPolicy(mailbox_max=1.0))
    try:
        env = Env(fake, server, svc, cfg)
        env.send(meeting("rights", f"<p>{TOK.format(20)}</p>"))
        assert [r.response for r in env.replies("rights")] == ["Accept"]
        spoolkit.wait_for(
            lambda: any(i.updates_sent for i in fake.mailbox(ORGANIZER).calendar.values())
        )
        assert not fake.full_access
        assert len(fake.impersonated) == len(fake.requests)  # every request, the room's too
        assert {a.lower() for a in fake.impersonated} == {ROOM, ORGANIZER}
        assert not svc.ctx.alarms.active("onprem")
    finally:
        svc.stop()
        server.stop()


def test_full_access_without_impersonation_is_not_enough(tmp_path: Path) -> None:
    """Delegate access is not the documented way: with FullAccess on the room but no
    impersonation role, the room is not answered and the mailbox alarm says why."""
    fake = FakeExchange()
    fake.impersonation_scope = set()
    fake.full_access = {ROOM}
    server = ThreadedServer(fake.app()).start()
    cfg = ews_config(tmp_path, server.url)
    svc = service.start(cfg, policy=RestartPolicy(mailbox_max=1.0))
    try:
        item = fake.deliver(ROOM, meeting("no-role", "<p>x</p>"))
        spoolkit.wait_for(
            lambda: any(a.name == "exchange_unreachable" for a in svc.ctx.alarms.active("onprem"))
        )
        [alarm] = [a for a in svc.ctx.alarms.active("onprem") if a.name == "exchange_unreachable"]
        assert "ErrorImpersonateUserDenied" in alarm.message, alarm
        assert item.id in fake.mailbox(ROOM).inbox
    finally:
        svc.stop()
        server.stop()


def test_check_config_online_names_the_missing_right(tmp_path: Path) -> None:
    fake = FakeExchange()
    server = ThreadedServer(fake.app()).start()
    try:
        out = _check_online(tmp_path, server.url, "--organizer", ORGANIZER)
        assert out.returncode == 0, out
        assert f"ok    mailbox {ROOM} opened by impersonation: inbox has 0 item(s)" in out.stdout
        assert f"ok    organizer {ORGANIZER}: in the impersonation scope" in out.stdout
        assert "AutomateProcessing None" in out.stdout

        # the role's scope leaves out the organizer: updates go by mail instead
        fake.impersonation_scope = {ROOM}
        out = _check_online(tmp_path, server.url, "--organizer", ORGANIZER)
        assert out.returncode == 1
        assert f"ok    mailbox {ROOM} opened by impersonation" in out.stdout
        assert f"FAIL  organizer {ORGANIZER} is outside the impersonation scope" in out.stdout
        assert "ErrorImpersonateUserDenied" in out.stdout

        # no role at all, FullAccess on the room (delegate access): the room is refused
        fake.impersonation_scope = set()
        fake.full_access = {ROOM}
        out = _check_online(tmp_path, server.url)
        assert out.returncode == 1
        assert f"FAIL  the service account may not impersonate {ROOM}" in out.stdout, out
        assert "ApplicationImpersonation" in out.stdout and "New-ManagementRoleAssignment" in (
            out.stdout
        )
        assert "FullAccess" in out.stdout  # what it holds instead, and that it is not used

        # the room's address has no mailbox
        fake.impersonation_scope = None
        fake.missing = {ROOM}
        out = _check_online(tmp_path, server.url)
        assert out.returncode == 1
        assert f"FAIL  no mailbox {ROOM}" in out.stdout and "New-Mailbox" in out.stdout, out
    finally:
        server.stop()
    wrong = FakeExchange(password="other")
    server = ThreadedServer(wrong.app()).start()
    try:
        out = _check_online(tmp_path, server.url)
        assert out.returncode == 1 and f"FAIL  cannot use mailbox {ROOM}" in out.stdout, out
    finally:
        server.stop()


def test_check_config_online_warns_of_reach_beyond_the_scope(tmp_path: Path) -> None:
    """--outside names a mailbox the service must not reach: reaching it is a warning."""
    fake = FakeExchange()
    fake.impersonation_scope = {ROOM, ORGANIZER}
    server = ThreadedServer(fake.app()).start()
    try:
        out = _check_online(tmp_path, server.url, "--outside", "ceo@example.com")
        assert out.returncode == 0, out
        assert "ok    ceo@example.com is out of reach" in out.stdout
        fake.impersonation_scope = None  # a role assignment without a scope: everyone
        out = _check_online(tmp_path, server.url, "--outside", "ceo@example.com")
        assert out.returncode == 1
        assert "WARN  the service account reaches ceo@example.com" in out.stdout, out
    finally:
        server.stop()


def test_subscription_drives_listing_and_survives_expiry(env: Env) -> None:
    env.send(meeting("one", "<p>x</p>"))
    spoolkit.wait_for(lambda: env.fake.requests.count("GetEvents") >= 5)
    listed = env.fake.requests.count("FindItem")
    polls = env.fake.requests.count("GetEvents")
    spoolkit.wait_for(lambda: env.fake.requests.count("GetEvents") >= polls + 10)
    assert env.fake.requests.count("FindItem") == listed  # idle: events only, no listing
    env.fake.drop_subscriptions()  # as after an Exchange restart
    env.send(meeting("two", "<p>x</p>"))
    assert env.replies("two")
    assert env.fake.requests.count("Subscribe") == 2


def test_without_subscriptions_the_inbox_is_polled(env: Env) -> None:
    env.fake.subscribe_supported = False
    env.fake.drop_subscriptions()
    env.send(meeting("polled", "<p>x</p>"))
    assert env.replies("polled")


def test_more_than_one_batch_at_once_is_all_answered(env: Env) -> None:
    """Regression: answered items leave the inbox while the next listing runs; paging by offset
    used to skip the items at the page boundary."""
    env.send(meeting("warm-up", "<p>x</p>"))
    items = [
        FakeItem(
            env.fake.new_id("in"),
            "MeetingRequest",
            meeting(f"bulk-{i}", "<p>no token</p>"),
            "Bulk",
            "",
            "olga@example.com",
        )
        for i in range(250)
    ]
    with env.fake.lock:
        for item in items:
            env.fake.mailbox(ROOM).inbox[item.id] = item
            env.fake.mailbox(ROOM).events.append(item.id)
    spoolkit.wait_for(lambda: not env.fake.mailbox(ROOM).inbox, timeout=60)
    answered = {r.meeting.uid for r in env.fake.replies(ROOM) if r.meeting}
    assert {f"bulk-{i}" for i in range(250)} <= answered


# --- exactly once against Exchange as it behaves -----------------------------------------------

TOK = "TOK:-00000000-0000-4000-8000-0000000000{:02d}#"


def settle(env: Env, seconds: float = 1.0) -> None:
    """Let the service see whatever Exchange delivered meanwhile (many poll intervals)."""
    spoolkit.wait_for(lambda: not env.fake.mailbox(ROOM).inbox, timeout=20)
    time.sleep(seconds)
    spoolkit.wait_for(lambda: not env.fake.mailbox(ROOM).inbox, timeout=20)
    notifier = env.svc.ctx.registry.get("onprem", "notifier")
    spoolkit.wait_for(lambda: notifier.proxy().pending().get(timeout=5) == 0)


@pytest.mark.parametrize("bumps_sequence", [False, True])
def test_the_rooms_own_organizer_update_coming_back_gets_no_reply(
    env: Env, bumps_sequence: bool
) -> None:
    env.fake.update_bumps_sequence = bumps_sequence
    env.send(meeting("echo", f"<p>Agenda</p><p>{TOK.format(1)}</p>"))
    spoolkit.wait_for(
        lambda: any(i.updates_sent for i in env.fake.mailbox("olga@example.com").calendar.values())
    )
    settle(env)
    [own] = env.fake.mailbox("olga@example.com").calendar.values()
    assert own.updates_sent == 1  # one organizer update, never a second
    assert [r.response for r in env.replies("echo")] == ["Accept"]  # one answer
    # the update reached every attendee, the room included, and the room set it aside
    echoes = [i for i in env.fake.mailbox(ROOM).deleted if i.request_type == "InformationalUpdate"]
    assert len(echoes) == 1
    assert any(i.request_type for i in env.fake.mailbox("bob@example.com").inbox.values())
    assert own.body.count("PXPS:-") == 1 and "Agenda" in own.body  # instructions once
    assert env.count("ignored", "unchanged") == 1


def test_a_refused_organizer_update_fails_alone_and_the_organizer_gets_the_instructions(
    env: Env,
) -> None:
    env.send(meeting("warm", "<p>x</p>"))
    env.fake.impersonation_scope = {ROOM}  # ErrorImpersonateUserDenied for Olga, for good
    env.fake.deliver(ROOM, meeting("denied", f"<p>{TOK.format(2)}</p>"))
    started = time.monotonic()
    later = [env.fake.deliver(ROOM, meeting(f"after-{i}", pxps(env.reserve()))) for i in range(5)]
    for item in later:
        assert item.meeting is not None
        spoolkit.wait_for(lambda item=item: bool(env.replies(item.meeting.uid)), timeout=10)
    assert time.monotonic() - started < 10  # not held up behind the refused update
    notifier = env.svc.ctx.registry.get("onprem", "notifier")
    spoolkit.wait_for(lambda: notifier.proxy().failed().get(timeout=5) == 1)
    spoolkit.wait_for(lambda: notifier.proxy().pending().get(timeout=5) == 0)
    # the organizer got the instructions by mail: nothing left for an admin (an organizer
    # outside the impersonation scope may be so by design), though `vmrsched failed` lists it
    alarms = {(a.integration, a.name) for a in env.svc.ctx.alarms.active()}
    assert ("onprem", "delivery_failed") not in alarms
    [notice] = [m for m in env.fake.replies(ROOM) if m.subject.startswith("Joining details")]
    assert notice.recipients == ("olga@example.com",) and "PXPS:-" in notice.body
    assert [r.response for r in env.replies("denied")] == ["Accept"]
    failed = subprocess.run(
        [sys.executable, "-m", "vmrsched", "failed", "--data-dir", str(env.cfg.data_dir)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    assert "denied" in failed.stdout and "ErrorImpersonateUserDenied" in failed.stdout


def test_an_organizer_meeting_that_no_longer_exists_is_failed_not_retried(env: Env) -> None:
    env.send(meeting("warm", "<p>x</p>"))
    env.fake.deliver(ROOM, meeting("gone", f"<p>{TOK.format(3)}</p>"), organizer_copy=False)
    spoolkit.wait_for(lambda: bool(env.replies("gone")))
    notifier = env.svc.ctx.registry.get("onprem", "notifier")
    spoolkit.wait_for(lambda: notifier.proxy().failed().get(timeout=5) == 1)
    env.send(meeting("next", pxps(env.reserve())))
    assert [r.response for r in env.replies("next")] == ["Accept"]
    assert any(m.subject.startswith("Joining details") for m in env.fake.replies(ROOM))


def test_recovery_of_a_pxps_booking_replaces_the_dead_instructions_and_its_echo_is_ignored(
    tmp_path: Path,
) -> None:
    fake = FakeExchange()
    server = ThreadedServer(fake.app()).start()
    cfg = ews_config(tmp_path, server.url)
    integ = cfg.integrations[0]
    renderer = integ.renderer()
    svc = service.start(cfg)
    try:
        env = Env(fake, server, svc, cfg)
        old = env.reserve()
        # the body as the add-in leaves it: the instructions our API rendered for the alias
        pasted = renderer.render(
            "single_use_joining_instructions_template", answers.variables(integ, None, old)
        )
        env.send(meeting("pxps-lost", f"<p>Agenda</p>{pasted}<p>See you</p>"))
        assert [r.response for r in env.replies("pxps-lost")] == ["Accept"]
    finally:
        svc.stop()
    try:
        restore_without(cfg.data_dir / "store" / "onprem", "pxps-lost")
        store = Store(cfg.data_dir / "store" / "onprem")
        gateway = make_gateway(integ, cfg.data_dir, Metrics())
        done = recovery.recover(integ, gateway, store, datetime.now(UTC))
        gateway.close()
        assert [d.action for d in done] == ["bound"]
        new = store.by_meeting_uid("pxps-lost")
        store.close()
        assert new is not None
        [own] = fake.mailbox("olga@example.com").calendar.values()
        assert own.updates_sent == 1
        for value in (old["alias"], old["numeric_alias"], old["alias_id"]):
            assert value not in own.body  # every trace of the dead instructions is gone
        assert own.body.count(f"PXPS:-{new['alias_id']}#") == 1
        assert own.body.count(new["alias"]) == pasted.count(old["alias"])  # one copy
        assert own.body.startswith("<p>Agenda</p>") and own.body.endswith("<p>See you</p>")
        assert fake.mailbox(ROOM).inbox  # Exchange delivered the update to the room too

        svc = service.start(cfg)  # the service comes back and reads that echo
        try:
            env = Env(fake, server, svc, cfg)
            spoolkit.wait_for(lambda: not fake.mailbox(ROOM).inbox, timeout=20)
            settle(env)
            assert [r.response for r in env.replies("pxps-lost")] == ["Accept"]
            assert own.updates_sent == 1
            assert env.count("ignored", "unchanged") == 1
        finally:
            svc.stop()
    finally:
        server.stop()


def test_a_polls_answers_go_out_in_one_create_item_and_a_refused_one_fails_alone(
    env: Env,
) -> None:
    env.send(meeting("warm", "<p>x</p>"))
    before = env.fake.requests.count("CreateItem")
    items = [env.fake.deliver(ROOM, meeting(f"batch-{i}", "<p>no token</p>")) for i in range(6)]
    env.fake.refuse_responses[items[2].id] = "ErrorMessageSizeExceeded"
    spoolkit.wait_for(lambda: all(bool(env.replies(f"batch-{i}")) for i in (0, 1, 3, 4, 5)))
    notifier = env.svc.ctx.registry.get("onprem", "notifier")
    spoolkit.wait_for(lambda: notifier.proxy().failed().get(timeout=5) == 1)
    assert not env.replies("batch-2")
    assert env.fake.requests.count("CreateItem") - before <= 3  # not one per answer


# --- issue 26: faults (an identity platform outage, answers lost in transit) ----------------


def _restarts(svc: service.Service) -> float:
    return sum(
        svc.ctx.metrics.registry.get_sample_value(
            "vmrsched_actor_restarts_total", {"integration": "onprem", "actor": actor}
        )
        or 0.0
        for actor in ("poller", "notifier", "allocator")
    )


def _alarms(svc: service.Service) -> set[str]:
    return {a.name for a in svc.ctx.alarms.active("onprem")}


def test_an_identity_platform_outage_is_an_outage_for_oauth_app(
    tmp_path: Path, oauth: OAuthEnv
) -> None:
    """The token endpoint (and its discovery document) answer 503, so msal raises
    MsalServiceError: EWS backs off with exchange_unreachable instead of crash-looping, and
    answers the waiting meeting a poll or two after the platform is back."""
    cfg = oauth_config(tmp_path, oauth, "oauth_app")
    svc = service.start(cfg, policy=RestartPolicy(mailbox_max=1.0))
    try:
        env = Env(oauth.fake, oauth.server, svc, cfg)
        env.send(meeting("oauth-before", "<p>no token</p>"))
        oauth.platform.unavailable = 503
        oauth.platform.expire_all()  # Exchange refuses the token we hold: a new one is needed
        spoolkit.wait_for(lambda: "exchange_unreachable" in _alarms(svc), timeout=10)
        waiting = oauth.fake.deliver(ROOM, meeting("oauth-during", "<p>no token</p>"))
        time.sleep(1.5)  # several polls' worth of refused sign-ins
        assert oauth.platform.refused >= 2
        assert waiting.id in oauth.fake.mailbox(ROOM).inbox
        assert svc.ctx.status.state("onprem") == "running" and _restarts(svc) == 0
        assert SIGN_IN not in _alarms(svc)  # an outage, not a lost sign-in
        oauth.platform.unavailable = 0
        back = time.monotonic()
        spoolkit.wait_for(lambda: waiting.id not in oauth.fake.mailbox(ROOM).inbox, timeout=10)
        assert time.monotonic() - back < 3.0
        spoolkit.wait_for(lambda: bool(env.replies("oauth-during")))
        spoolkit.wait_for(lambda: "exchange_unreachable" not in _alarms(svc))
        assert _restarts(svc) == 0
    finally:
        svc.stop()


def test_delegated_tokens_see_an_identity_outage_as_an_outage_not_a_lost_sign_in(
    tmp_path: Path, oauth: OAuthEnv
) -> None:
    from urllib.parse import parse_qsl, urlsplit

    import requests

    from vmrsched.mailbox.base import GatewayError
    from vmrsched.mailbox.ews_auth import DelegatedTokens, SignInRequired

    ex = oauth_config(tmp_path, oauth, "oauth_delegated").integrations[0].exchange
    tokens = DelegatedTokens(ex, tmp_path / "cache.json")
    authorize = tokens.start_sign_in(ex.oauth_redirect_uri)
    back = requests.get(authorize, verify=str(oauth.ca_file), allow_redirects=False, timeout=10)
    tokens.finish_sign_in(dict(parse_qsl(urlsplit(back.headers["Location"]).query)))
    assert tokens.get()

    oauth.platform.unavailable, oauth.platform.retry_after = 503, "4"
    with pytest.raises(GatewayError) as raised:
        tokens.get(force=True)  # the refresh token grant answered 503
    assert not isinstance(raised.value, SignInRequired) and raised.value.alarm is None
    assert raised.value.retry_after == 4 and not raised.value.permanent
    fresh = DelegatedTokens(ex, tmp_path / "cache.json")  # the admin's sign-in page meanwhile
    with pytest.raises(GatewayError) as raised:
        fresh.start_sign_in(ex.oauth_redirect_uri)
    assert not isinstance(raised.value, SignInRequired)
    oauth.platform.unavailable = 0
    assert tokens.get(force=True)  # back at once: no refusal cached past the outage


@pytest.mark.parametrize("how", ["hold", "drop"])
def test_an_organizer_update_whose_answer_was_lost_is_checked_not_sent_again(
    env: Env, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """Exchange carries out the UpdateItem (the update goes to every attendee) and the accept,
    but their answers are lost (held past the client's timeout, or the connection dropped).
    Before sending again the notifier asks: the organizer's meeting already carries the alias,
    and the request is gone from the inbox. One update, one reply."""
    from exchangelib.protocol import BaseProtocol

    monkeypatch.setattr(BaseProtocol, "TIMEOUT", 0.5)
    env.fake.hold_seconds = 1.5
    env.send(meeting("warm", "<p>x</p>"))
    env.fake.lose_answer("CreateItem", how)
    env.fake.lose_answer("UpdateItem", how)
    env.fake.deliver(ROOM, meeting("lost", f"<p>{TOK.format(9)}</p>"))
    own = env.fake.mailbox("olga@example.com").calendar

    def updated() -> int:
        return sum(i.updates_sent for i in list(own.values()) if i.meeting.uid == "lost")

    spoolkit.wait_for(lambda: updated() >= 1, timeout=20)
    spoolkit.wait_for(lambda: not env.fake.mailbox(ROOM).inbox, timeout=20)  # and the echo
    notifier = env.svc.ctx.registry.get("onprem", "notifier")
    spoolkit.wait_for(lambda: notifier.proxy().pending().get(timeout=5) == 0, timeout=20)
    time.sleep(env.fake.hold_seconds)  # anything sent twice has arrived by now
    assert env.fake.lost == [("CreateItem", how), ("UpdateItem", how)]
    assert updated() == 1
    assert [r.response for r in env.replies("lost")] == ["Accept"]
    assert notifier.proxy().failed().get(timeout=5) == 0
    spoolkit.wait_for(lambda: "exchange_unreachable" not in _alarms(env.svc))


def test_a_changed_service_account_does_not_use_the_old_accounts_tokens(
    tmp_path: Path, oauth: OAuthEnv
) -> None:
    """The token cache belongs to one app and one account: once the config names another
    account (or app), the old sign-in's tokens are dropped and the new account signs in."""
    from dataclasses import replace
    from urllib.parse import parse_qsl, urlsplit

    import requests

    from vmrsched.mailbox.ews_auth import DelegatedTokens, SignInRequired

    ex = oauth_config(tmp_path, oauth, "oauth_delegated").integrations[0].exchange
    tokens = DelegatedTokens(ex, tmp_path / "cache.json")
    authorize = tokens.start_sign_in(ex.oauth_redirect_uri)
    back = requests.get(authorize, verify=str(oauth.ca_file), allow_redirects=False, timeout=10)
    tokens.finish_sign_in(dict(parse_qsl(urlsplit(back.headers["Location"]).query)))
    assert tokens.get()
    assert DelegatedTokens(ex, tmp_path / "cache.json").get()  # same account: kept

    other = replace(ex, service_account_username="someone.else@example.com")
    with pytest.raises(SignInRequired):
        DelegatedTokens(other, tmp_path / "cache.json").get()
    assert not (tmp_path / "cache.json").exists()  # dropped, not kept for later

    tokens = DelegatedTokens(ex, tmp_path / "cache.json")  # and back: the old one is gone too
    with pytest.raises(SignInRequired):
        tokens.get()
    authorize = tokens.start_sign_in(ex.oauth_redirect_uri)
    back = requests.get(authorize, verify=str(oauth.ca_file), allow_redirects=False, timeout=10)
    tokens.finish_sign_in(dict(parse_qsl(urlsplit(back.headers["Location"]).query)))
    assert (tmp_path / "cache.json").exists()
    DelegatedTokens(replace(ex, oauth_client_id="another-app"), tmp_path / "cache.json")
    assert not (tmp_path / "cache.json").exists()  # another app: the same account signs in again


# --- the EWS audit: a reply after a crash, Deleted Items, a request deleted before its reply -----


def _reply_to(item: FakeItem, outcome: str = "accepted") -> Any:
    from vmrsched.mailbox.base import Outgoing

    assert item.meeting is not None
    return Outgoing(
        id=f"reply-{item.id}",
        kind="reply",
        sender=ROOM,
        sender_name="Room",
        recipients=(item.meeting.organizer_email,),
        subject=f"Accepted: {item.subject}",
        html_body="<p>ok</p>",
        outcome=outcome,
        reason="",
        correlation_id="c",
        meeting_uid=item.meeting.uid,
        extra={"item_id": item.id},
    )


@pytest.mark.parametrize("immutable_ids", [False, True])
def test_a_reply_whose_request_left_the_inbox_was_delivered_and_is_not_sent_again(
    tmp_path: Path, immutable_ids: bool
) -> None:
    """After a crash between Exchange carrying out an AcceptItem and the delivery mark, the
    notifier asks `delivered` before sending again. Exchange moved the answered request to
    Deleted Items: under a new id (ErrorItemNotFound for the old one) or, with immutable ids,
    under the same id with Deleted Items as its parent folder. Either way it was answered; a
    request still in the inbox was not."""
    fake = FakeExchange()
    fake.immutable_ids = immutable_ids
    server = ThreadedServer(fake.app()).start()
    try:
        cfg = ews_config(tmp_path, server.url)
        gateway = make_gateway(cfg.integrations[0], cfg.data_dir, Metrics())
        item = fake.deliver(ROOM, meeting("crash", "<p>x</p>"))
        reply = _reply_to(item)
        assert gateway.delivered(reply) is False  # still in the inbox: not answered
        assert gateway.send_many([reply]) == [None]  # the send the crash forgot
        assert item in fake.mailbox(ROOM).deleted
        assert gateway.delivered(reply) is True
        sent = len(env_replies := fake.replies(ROOM))
        assert sent == 1 and env_replies[0].response == "Accept"
        gateway.close()
    finally:
        server.stop()


def test_a_request_deleted_before_its_reply_fails_the_reply(env: Env) -> None:
    """Within one run nothing was sent for a request Exchange no longer has: its reply fails
    (`vmrsched failed`, delivery_failed), it is not logged as answered."""
    env.send(meeting("warm", "<p>x</p>"))
    item = env.fake.deliver(ROOM, meeting("deleted", "<p>no token</p>"))
    env.fake.refuse_responses[item.id] = "ErrorItemNotFound"  # deleted before the CreateItem
    notifier = env.svc.ctx.registry.get("onprem", "notifier")
    spoolkit.wait_for(lambda: notifier.proxy().failed().get(timeout=5) == 1, timeout=20)
    assert "delivery_failed" in _alarms(env.svc)
    assert not env.replies("deleted")


def test_items_set_aside_go_to_deleted_items_never_hard_deleted(env: Env) -> None:
    """A plain mail, an unreadable request and the room's own update coming back are moved to
    Deleted Items (DeleteType MoveToDeletedItems), where an admin can still find them."""
    env.send(meeting("warm", "<p>x</p>"))
    plain = FakeItem(env.fake.new_id("in"), "Message", None, "Hello", "<p>hi</p>", "a@example.com")
    env.fake.put_in_inbox(ROOM, plain)
    unreadable = FakeItem(
        env.fake.new_id("in"), "MeetingRequest", None, "No calendar", "<p>?</p>", "a@example.com"
    )
    env.fake.put_in_inbox(ROOM, unreadable)
    box = env.fake.mailbox(ROOM)
    spoolkit.wait_for(lambda: plain.id not in box.inbox and unreadable.id not in box.inbox)
    assert plain in box.deleted and unreadable in box.deleted
    assert not box.purged
    assert env.fake.delete_types and set(env.fake.delete_types) == {"MoveToDeletedItems"}
