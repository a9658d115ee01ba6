"""A configured CA file (`tls_ca_file`: an internal CA, an inspecting proxy's) is what every
client given one trusts, whatever REQUESTS_CA_BUNDLE and CURL_CA_BUNDLE say: requests lets
those override `Session.verify`, so each client passes its CA with every request (Pexip's
management API, exchangelib's adapter) or merges it last (CaSession: msal's token endpoints,
the sign-ins, Graph). The environment's proxy still carries the calls, as docs/production
promises. Real TLS: a certificate minted here, and another CA named by the environment."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import requests
from aiohttp import web

from tests.configs import ews_config, spool_toml
from tests.fakes.ews_server import FakeExchange
from tests.fakes.identity_platform import server_context, tls_files
from tests.fakes.pexip_server import FakePexip
from tests.fakes.threaded import ThreadedServer
from tests.test_outbound import Proxy
from vmrsched.config import PexipConfig
from vmrsched.mailbox.ews import EwsMailbox
from vmrsched.mailbox.sessions import CaSession
from vmrsched.pexip.management import ManagementClient, PexipUnavailable
from vmrsched.proxies import use_rule

PROXY_VARIABLES = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY")
PROXY_VARIABLES += ("all_proxy", "NO_PROXY", "no_proxy")


@dataclass
class Tls:
    ca: Path  # what the config names: the servers' certificate is its own CA
    other: Path  # what the environment names: another CA altogether
    servers: list[ThreadedServer]

    def serve(self, app: web.Application) -> ThreadedServer:
        cert, key = self.ca, self.ca.with_name("tls.key")
        context = server_context(cert, key)
        server = ThreadedServer(app, ssl_context=context).start()
        self.servers.append(server)
        return server


@pytest.fixture
def tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Tls]:
    (tmp_path / "ours").mkdir()
    (tmp_path / "theirs").mkdir()
    ca, _ = tls_files(tmp_path / "ours")
    other, _ = tls_files(tmp_path / "theirs")
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(other))
    monkeypatch.setenv("CURL_CA_BUNDLE", str(other))
    made = Tls(ca, other, [])
    yield made
    for server in made.servers:
        server.stop()


def pexip_client(url: str, ca: Path, session: requests.Session | None = None) -> ManagementClient:
    settings = PexipConfig(
        mode="management_api",
        management_url=url,
        management_username="admin",
        tls_ca_file=str(ca),
    )
    return ManagementClient(settings, "pw", session=session or use_rule(requests.Session(), False))


def test_the_environment_alone_would_refuse_the_servers(tls: Tls) -> None:
    """The premise: with only the environment's CA, the servers' certificate fails."""
    server = tls.serve(FakePexip(password="pw").app())
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(server.url + "/api/admin/configuration/v1/conference/", timeout=5)


def test_pexips_management_api_trusts_the_configured_ca(tls: Tls, tmp_path: Path) -> None:
    """The provisioner, the Pexip directory and check-config all use ManagementClient."""
    fake = FakePexip(password="pw")
    fake.add_conference("Room", ["room@example.com"])
    server = tls.serve(fake.app())
    assert [c["name"] for c in pexip_client(server.url, tls.ca).list("conference")] == ["Room"]

    path = tmp_path / "vmrsched.toml"
    path.write_text(
        spool_toml(
            tmp_path / "data",
            integration=(
                '[integrations.pexip]\nmode = "management_api"\n'
                f'management_url = "{server.url}"\nmanagement_username = "admin"\n'
                f'management_password_env = "PEXIP_PW"\ntls_ca_file = "{tls.ca}"\n'
            ),
        )
    )
    out = subprocess.run(
        [sys.executable, "-m", "vmrsched", "check-config", "--online", "--config", str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PEXIP_PW": "pw"},
        timeout=60,
    )
    assert "ok    Pexip management API" in out.stdout, out.stdout + out.stderr


def test_identity_and_sign_in_sessions_trust_the_configured_ca(tls: Tls) -> None:
    """CaSession: msal's token endpoints for EWS, the user and admin sign-ins (and Graph)."""
    server = tls.serve(FakePexip(password="pw").app())
    answer = CaSession(str(tls.ca)).get(server.url + "/api/admin/configuration/v1/conference/")
    assert answer.status_code == 401  # reached, over TLS checked against the configured CA


def test_ews_trusts_the_configured_ca(tls: Tls, tmp_path: Path) -> None:
    fake = FakeExchange()
    server = tls.serve(fake.app())
    integ = ews_config(tmp_path, server.url).integrations[0]
    integ = replace(integ, exchange=replace(integ.exchange, tls_ca_file=str(tls.ca)))
    gateway = EwsMailbox(integ)
    try:
        checks = gateway.probe()
    finally:
        gateway.close()
    assert checks[0][0], checks
    assert "GetFolder" in fake.requests


def test_the_environments_proxy_still_carries_the_calls(
    tls: Tls, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Passing the CA with each request keeps the environment's other settings: HTTPS_PROXY."""
    server = tls.serve(FakePexip(password="pw").app())
    proxy = Proxy()
    try:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        with pytest.raises(PexipUnavailable):
            list(pexip_client(server.url, tls.ca).list("conference"))
        with pytest.raises(requests.exceptions.ProxyError):
            CaSession(str(tls.ca)).get(server.url + "/", timeout=5)
    finally:
        proxy.close()
    tunnels = [line.rsplit(" ", 1)[0] for line in proxy.seen]
    assert tunnels == [f"CONNECT 127.0.0.1:{server.port}"] * 2
