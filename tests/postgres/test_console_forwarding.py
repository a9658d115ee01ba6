"""The admin console through either instance (issue 30): two `vmrsched serve` processes on one
PostgreSQL. A console session opened through one instance is known to the other, and signing
out through either ends it on both; the console's search and acts for an integration the other
instance runs are passed on to it, the form's CSRF token made by whichever instance served the
page (their key is shared); the service account's sign-in, started through the instance that
does not run the integration, finishes on the one that does; Microsoft Graph's notifications
that reach the wrong instance are passed on to the owner, answered at once either way."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import psycopg
import pytest
import requests

from tests import serving, spoolkit
from tests.configs import ROOM
from tests.graphkit import GraphWorld, graph_world
from tests.mailbox.test_ews import OAuthEnv, oauth
from tests.postgres.test_forwarding import (
    LEASE,
    SERVER,
    TOKEN,
    Pair,
    bound,
    counted,
    owned,
    pair,
    raw,
    reserve,
)
from tests.sharedkit import write_config

__all__ = ["oauth", "pair"]  # the fixtures, shared with their own tests

pytestmark = pytest.mark.slow
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
CALLBACK = "/admin/platform/msexchangeconnector/oauth_redirect/"


def log_in(port: int) -> str:
    """A console session opened with the admin token through the instance at `port`: its
    cookie."""
    status, headers, _ = raw(
        port, "POST", "/admin/login", urlencode({"token": TOKEN, "next": "/admin"}).encode(), FORM
    )
    assert status == 303, headers
    found = re.search(r"vmrsched_admin=([^;]+)", headers["Set-Cookie"])
    assert found is not None
    return f"vmrsched_admin={found.group(1)}"


def page(port: int, cookie: str, query: str = "") -> tuple[int, str, str]:
    """The console's page through `port`: (status, html, its forms' CSRF token)."""
    status, _, body = raw(port, "GET", f"/admin{query}", headers={"Cookie": cookie})
    html = body.decode()
    found = re.search(r'name="csrf" value="([0-9a-f]*)"', html)
    return status, html, found.group(1) if found else ""


def test_a_console_session_opened_on_one_instance_holds_on_the_other_until_signed_out(
    pair: Pair,
) -> None:
    one, two = pair.ports
    cookie = log_in(one)
    for port in (one, two):
        status, html, csrf = page(port, cookie)
        assert status == 200 and "Signed in: admin token" in html
        assert csrf  # the same token from either: made with the instances' shared key
    assert page(one, cookie)[2] == page(two, cookie)[2]
    # signed out through the other instance, with the CSRF token the first one gave
    csrf = page(one, cookie)[2]
    form = urlencode({"csrf": csrf}).encode()
    status, headers, _ = raw(two, "POST", "/admin/logout", form, {**FORM, "Cookie": cookie})
    assert status == 303 and headers["Location"] == "/admin/login"
    for port in (one, two):
        status, headers, _ = raw(port, "GET", "/admin", headers={"Cookie": cookie})
        assert status == 303 and headers["Location"].startswith("/admin/login")
    # a wrong CSRF token is refused whichever instance takes the form
    cookie = log_in(two)
    status, _, _ = raw(one, "POST", "/admin/logout", b"csrf=00", {**FORM, "Cookie": cookie})
    assert status == 403


def test_the_console_searches_and_acts_on_an_integration_the_other_instance_runs(
    tmp_path: Path, pair: Pair
) -> None:
    here, owner = pair.owner("alpha"), pair.owner("beta")  # `here` does not run beta
    cookie = log_in(here)
    # the page of alpha, which `here` runs, served by `here` itself: its CSRF token
    status, _, csrf = page(here, cookie, "?integration=alpha")
    assert status == 200 and csrf
    assert counted(here, "alpha", "relayed") == 0

    # the search in beta's aliases, asked of `here`: the owner's answer
    _, _, made = reserve(owner, "beta")
    alias = made["alias"]
    status, html, _ = page(here, cookie, "?" + urlencode({"integration": "beta", "q": alias}))
    assert status == 200 and alias in html
    assert counted(here, "beta", "relayed") == 1
    assert counted(owner, "beta", "received") == 1

    # deleting it through `here`, with the token of alpha's page: done on the owner
    delete = f"/admin/integrations/beta/aliases/{quote(alias, safe='')}/delete"
    form = urlencode({"csrf": csrf, "confirm": "yes", "integration": "beta"}).encode()
    status, headers, _ = raw(here, "POST", delete, form, {**FORM, "Cookie": cookie})
    assert status == 303 and "done=deleted" in headers["Location"], headers
    record = pair.record("beta", alias)
    assert record is not None and record["status"] == "deleted"
    assert "admin token" in json.dumps(record)
    assert counted(owner, "beta", "received") == 2

    # resending the joining details of a booked meeting of beta through `here`
    data, _ = spoolkit.request(body="<p>TOK:-00000001-0000-4000-8000-000000000000#</p>")
    spoolkit.drop(tmp_path / "spool" / "beta" / "inbox", data)
    spoolkit.wait_for(lambda: bound(pair, "beta") is not None, timeout=20)
    booked = bound(pair, "beta")
    assert booked is not None
    spool = tmp_path / "spool" / "beta"
    spoolkit.wait_for(lambda: len(spoolkit.outbox(spool)) >= 1, timeout=20)
    before = len(spoolkit.outbox(spool))
    resend = f"/admin/integrations/beta/aliases/{quote(booked, safe='')}/resend"
    form = urlencode({"csrf": csrf, "integration": "beta"}).encode()
    status, headers, _ = raw(here, "POST", resend, form, {**FORM, "Cookie": cookie})
    assert status == 303 and "done=resent" in headers["Location"], headers
    spoolkit.wait_for(lambda: len(spoolkit.outbox(spool)) > before, timeout=20)
    assert counted(owner, "beta", "received") == 3

    # a forged token is refused by the owner, through whichever instance
    status, _, _ = raw(here, "POST", resend, b"csrf=00", {**FORM, "Cookie": cookie})
    assert status == 403
    assert counted(here, "beta", "relayed") == 4

    # with beta's owner gone, `here` shows the console itself rather than an error; an act on
    # beta is 503 owner_unavailable until `here` takes beta over
    pair.procs[owner].send_signal(signal.SIGKILL)
    pair.procs[owner].wait(10)
    status, html, _ = page(here, cookie, "?integration=beta")
    assert status == 200 and "Signed in: admin token" in html
    assert counted(here, "beta", "unreachable") == 1
    status, headers, body = raw(here, "POST", resend, form, {**FORM, "Cookie": cookie})
    assert status == 503 and json.loads(body)["error"]["code"] == "owner_unavailable"
    assert "Retry-After" in headers


# --- the service account's sign-in (EWS oauth_delegated) ------------------------------------


def ews_block(env: OAuthEnv) -> str:
    """An EWS integration `onprem` signing in as the service account (oauth_delegated), against
    the fake identity platform and Exchange."""
    authority = env.platform.authority
    return f"""
[[integrations]]
name = "onprem"
backend = "ews"
timezone = "Europe/London"
[integrations.exchange]
ews_url = "{env.server.url}/EWS/Exchange.asmx"
authentication = "oauth_delegated"
service_account_username = "svc-vmr@contoso.example"
oauth_client_id = "{env.platform.client_id}"
oauth_client_secret_env = "VMRSCHED_OAUTH_SECRET"
oauth_token_endpoint = "{authority}/oauth2/v2.0/token"
oauth_authorization_endpoint = "{authority}/oauth2/v2.0/authorize"
oauth_redirect_uri = "https://vc.example.com{CALLBACK}"
tls_ca_file = "{env.ca_file}"
mailbox_name = "Video Room"
mailbox_email = "{ROOM}"
poll_interval_seconds = 0.05
[integrations.addin]
token_validation = "none"
server_fqdn = "vc.example.com"
"""


class Instances:
    """Two `vmrsched serve` processes on one database, each running one of `names`; `extra`
    is appended to each config (more integrations)."""

    def __init__(
        self, tmp: Path, dsn: str, names: tuple[str, ...], extra: str, env: dict[str, str]
    ) -> None:
        self.tmp, self.dsn, self.names, self.extra, self.env = tmp, dsn, names, extra, env
        self.procs: list[subprocess.Popen[bytes]] = []
        self.ports = [serving.free_port(), serving.free_port()]

    def start(self, spool_names: tuple[str, ...]) -> None:
        for index, instance in enumerate(("one", "two")):
            port = self.ports[index]
            config = write_config(self.tmp, instance, port, LEASE, spool_names, server=SERVER)
            config.write_text(config.read_text() + self.extra.format(one=self.ports[0]))
            env = {"VMRSCHED_DSN": self.dsn, "VMRSCHED_ADMIN_TOKEN": TOKEN, **self.env}
            self.procs.append(serving.start(config, env))
            if index == 0:
                spoolkit.wait_for(lambda p=port: sorted(owned(p)) == sorted(self.names), 40)
        spoolkit.wait_for(lambda: all(len(owned(p)) == 1 for p in self.ports), timeout=40)

    def owner(self, name: str) -> int:
        return next(p for p in self.ports if name in owned(p))

    def other(self, name: str) -> int:
        return next(p for p in self.ports if name not in owned(p))

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(30)


@pytest.fixture
def ews_pair(tmp_path: Path, dsn: str, oauth: OAuthEnv) -> Iterator[Instances]:
    started = Instances(
        tmp_path,
        dsn,
        ("alpha", "onprem"),
        ews_block(oauth),
        {"VMRSCHED_OAUTH_SECRET": oauth.platform.client_secret},
    )
    try:
        started.start(("alpha",))
        yield started
    finally:
        started.stop()


def test_the_service_accounts_sign_in_callback_reaching_the_other_instance_finishes_on_the_owner(
    ews_pair: Instances, oauth: OAuthEnv
) -> None:
    owner, other = ews_pair.owner("onprem"), ews_pair.other("onprem")
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    # started through the instance that does not run onprem (an admin's browser, bound to it)
    status, headers, _ = raw(other, "GET", "/admin/integrations/onprem/sign-in", headers=bearer)
    assert status == 302, headers
    bound = re.search(r"vmrsched_sign_in_state=([^;]+)", headers["Set-Cookie"])
    assert bound is not None
    at_provider = requests.get(
        headers["Location"], verify=str(oauth.ca_file), allow_redirects=False, timeout=10
    )
    assert at_provider.status_code == 302, at_provider.text
    back = urlsplit(at_provider.headers["Location"])
    assert back.path == CALLBACK
    # the provider sends the browser back through the load balancer: to the other instance
    cookie = {"Cookie": f"vmrsched_sign_in_state={bound.group(1)}", **bearer}
    status, _, body = raw(other, "GET", f"{CALLBACK}?{back.query}", headers=cookie)
    assert status == 200, body
    assert "svc-vmr@contoso.example" in body.decode()
    assert counted(other, "onprem", "relayed") == 1
    assert counted(owner, "onprem", "received") == 1
    # the owner keeps the sign-in (its token cache, in the database) and its alarm goes
    with psycopg.connect(ews_pair.dsn) as conn:
        row = conn.execute(
            "SELECT identity FROM vmrsched_token_caches WHERE integration = 'onprem'"
        ).fetchone()
    assert row is not None and row[0]
    spoolkit.wait_for(lambda: _alarms(owner, "onprem") == [], timeout=20)
    # the attempt is used up: its state names no integration any more, so the same callback
    # again is answered (refused) by the instance it reaches
    assert dict(parse_qsl(back.query))["state"]
    status, _, _ = raw(other, "GET", f"{CALLBACK}?{back.query}", headers=cookie)
    assert status == 400
    assert counted(other, "onprem", "relayed") == 1


def _alarms(port: int, name: str) -> list[str]:
    _, body = serving.get(port, "/readyz")
    return [a["name"] for a in json.loads(body)["integrations"][name]["alarms"]]


# --- Microsoft Graph's notifications -----------------------------------------------------------


def graph_block(world: GraphWorld) -> str:
    keys = world.graph_keys(poll_interval_seconds=30, notification_url="http://127.0.0.1:{one}")
    lines = "\n".join(
        f"{k} = {json.dumps(v) if not isinstance(v, int | float) else v}" for k, v in keys.items()
    )
    return f"""
[[integrations]]
name = "online"
backend = "graph"
timezone = "Europe/London"
[integrations.exchange]
mailbox_name = "Video Room"
mailbox_email = "room@contoso.example"
[integrations.graph]
{lines}
[integrations.addin]
token_validation = "none"
server_fqdn = "vc.example.com"
"""


@pytest.fixture
def graph_pair(tmp_path: Path, dsn: str) -> Iterator[tuple[Instances, GraphWorld]]:
    with graph_world(tmp_path) as world:
        world.fake.silent = True  # the test sends the notifications itself
        started = Instances(
            tmp_path, dsn, ("alpha", "online"), graph_block(world), {"GRAPH_SECRET": "graph-secret"}
        )
        try:
            started.start(("alpha",))
            yield started, world
        finally:
            started.stop()


def graph_counted(port: int, result: str) -> float:
    _, text = serving.get(port, "/metrics")
    pattern = (
        rf'^vmrsched_graph_notifications_total\{{integration="online",result="{result}"\}} (\S+)$'
    )
    found = re.search(pattern, text.decode(), re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_a_graph_notification_reaching_the_other_instance_is_passed_on_to_the_owner(
    graph_pair: tuple[Instances, GraphWorld],
) -> None:
    pair, world = graph_pair
    owner, other = pair.owner("online"), pair.other("online")
    # Graph's validation handshake is answered by either instance itself
    for port in (owner, other):
        status, headers, body = raw(
            port, "POST", "/graph/notifications/online?validationToken=abc%20123"
        )
        assert status == 200 and body == b"abc 123"
        assert headers["Content-Type"].startswith("text/plain")
    spoolkit.wait_for(lambda: bool(world.fake.subscriptions), timeout=30)
    [subscription] = list(world.fake.subscriptions.values())
    note = {
        "subscriptionId": subscription["id"],
        "clientState": subscription["clientState"],
        "changeType": "created",
        "resource": "Users/room@contoso.example/Messages/m-1",
    }
    payload = json.dumps({"value": [note]}).encode()
    json_type = {"Content-Type": "application/json"}
    started = time.monotonic()
    status, _, _ = raw(other, "POST", "/graph/notifications/online", payload, json_type)
    assert status == 202 and time.monotonic() - started < 3  # answered at once
    spoolkit.wait_for(lambda: graph_counted(owner, "accepted") == 1, timeout=10)
    assert counted(other, "online", "relayed") == 1
    assert counted(owner, "online", "received") == 1
    assert graph_counted(other, "accepted") == 0
    # the clientState is still checked, by the owner
    forged = json.dumps({"value": [{**note, "clientState": "not-ours"}]}).encode()
    status, _, _ = raw(other, "POST", "/graph/notifications/online", forged, json_type)
    assert status == 202
    spoolkit.wait_for(lambda: graph_counted(owner, "refused") == 1, timeout=10)
    assert graph_counted(owner, "accepted") == 1
    # with the owner gone, the notification is still answered as Graph expects
    owner_proc = pair.procs[pair.ports.index(owner)]
    owner_proc.kill()
    owner_proc.wait(10)
    started = time.monotonic()
    status, _, _ = raw(other, "POST", "/graph/notifications/online", payload, json_type)
    assert status == 202 and time.monotonic() - started < 3
    spoolkit.wait_for(lambda: counted(other, "online", "unreachable") == 1, timeout=15)
