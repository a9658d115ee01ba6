"""Calls the service makes out, under one proxy rule: the environment's proxy (HTTP_PROXY,
HTTPS_PROXY, NO_PROXY) for every client (requests for EWS, msal and Graph, aiohttp for the
metadata and signing keys), and none at all for an integration with disable_web_proxy. And
the Exchange metadata documents an admin configures, by host or by URL with its own path."""

from __future__ import annotations

import socketserver
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
import requests
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.configs import ROOM, ews_config
from tests.fakes.ews_server import FakeExchange
from tests.fakes.identity_provider import IdentityProvider
from tests.fakes.threaded import ThreadedServer
from vmrsched import config
from vmrsched.mailbox.ews import EwsMailbox
from vmrsched.proxies import proxy_for, use_rule
from vmrsched.signin.identity import ExchangeIdentityVerifier, MetadataUnavailable, TokenError

AUDIENCE = "https://vmr.example.com/addin/onprem/taskpane.html"


class Proxy:
    """A forward proxy that writes down each request it is asked to carry and carries none."""

    def __init__(self) -> None:
        seen: list[str] = []
        self.seen = seen

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                line = self.rfile.readline().decode("latin-1").strip()
                seen.append(line)
                self.wfile.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n")
                self.wfile.write(b"Connection: close\r\n\r\n")

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[Proxy]:
    running = Proxy()
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.setenv(name, running.url)
    yield running
    running.close()


def direct(integ: config.IntegrationConfig, on: bool) -> config.IntegrationConfig:
    return replace(integ, advanced=replace(integ.advanced, disable_web_proxy=on))


def test_the_rule_reads_the_environment_and_the_switch_turns_it_off(
    proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert proxy_for("https://graph.microsoft.com/v1.0") == proxy.url
    assert proxy_for("https://graph.microsoft.com/v1.0", direct=True) is None
    monkeypatch.setenv("NO_PROXY", "mail.contoso.example")
    assert proxy_for("https://mail.contoso.example/EWS/Exchange.asmx") is None
    session = use_rule(requests.Session(), direct=True)
    assert not session.trust_env and not session.proxies


@pytest.mark.parametrize("switch", [False, True], ids=["through the proxy", "proxy off"])
def test_ews_calls_follow_the_rule(tmp_path: Path, proxy: Proxy, switch: bool) -> None:
    fake = FakeExchange()
    server = ThreadedServer(fake.app()).start()
    try:
        integ = direct(ews_config(tmp_path, server.url).integrations[0], switch)
        gateway = EwsMailbox(integ)
        checks = gateway.probe()
        gateway.close()
        if switch:
            assert checks[0][0], checks
            assert proxy.seen == [] and "GetFolder" in fake.requests
        else:
            assert not checks[0][0] and ROOM in checks[0][1]
            assert proxy.seen and proxy.seen[0].startswith(f"POST {server.url}/EWS/Exchange.asmx")
            assert fake.requests == []
    finally:
        server.stop()


async def _metadata_server(idp: IdentityProvider, path: str) -> TestServer:
    app = web.Application()
    app.router.add_get(path, idp._metadata)
    server = TestServer(app)
    await server.start_server()
    idp.base = str(server.make_url("")).rstrip("/")
    return server


@pytest.mark.parametrize("switch", [False, True], ids=["through the proxy", "proxy off"])
async def test_metadata_fetches_follow_the_rule(proxy: Proxy, switch: bool) -> None:
    """aiohttp ignores HTTPS_PROXY unless told: the verifier tells it, as requests does."""
    idp = IdentityProvider()
    server = await _metadata_server(idp, "/autodiscover/metadata/json/1")
    try:
        async with aiohttp.ClientSession() as session:
            verifier = ExchangeIdentityVerifier(
                AUDIENCE, (idp.base,), lambda: session, direct=switch
            )
            token = idp.exchange_token(AUDIENCE)
            if switch:
                assert (await verifier.verify(token)).kind == "exchange"
                assert proxy.seen == []
            else:  # the proxy answers 502: the keys cannot be had (503), the token is not at fault
                with pytest.raises(MetadataUnavailable):
                    await verifier.verify(token)
                assert proxy.seen == [f"GET {idp.base}/autodiscover/metadata/json/1 HTTP/1.1"]
                assert idp.requests == []
    finally:
        await server.close()


async def test_a_metadata_url_with_its_own_path_is_fetched_and_no_other(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    idp = IdentityProvider()
    server = await _metadata_server(idp, "/exchange/metadata.json")
    try:
        configured = f"{idp.base}/exchange/metadata.json"
        async with aiohttp.ClientSession() as session:
            verifier = ExchangeIdentityVerifier(AUDIENCE, (configured,), lambda: session)
            identity = await verifier.verify(idp.exchange_token(AUDIENCE, amurl=configured))
            assert identity.kind == "exchange"
            other = f"{idp.base}/autodiscover/metadata/json/1"  # same host, not configured
            with pytest.raises(TokenError) as refused:
                await verifier.verify(idp.exchange_token(AUDIENCE, amurl=other))
            assert refused.value.code == "untrusted_issuer"
            assert idp.requests == ["/exchange/metadata.json"]
    finally:
        await server.close()


def test_metadata_entries_as_documents() -> None:
    from vmrsched.signin.identity import trusted_documents

    documents = trusted_documents(
        ("mail.contoso.example", "https://hybrid.contoso.example/", "https://x.example/m/1")
    )
    assert documents == {
        "https://mail.contoso.example/autodiscover/metadata/json/1",
        "https://hybrid.contoso.example/autodiscover/metadata/json/1",
        "https://x.example/m/1",
    }
    # Exchange writes the default port into amurl: still the configured document
    idp = IdentityProvider()
    verifier = ExchangeIdentityVerifier(AUDIENCE, ("mail.contoso.example",), aiohttp.ClientSession)
    amurl = "https://MAIL.contoso.example:443/autodiscover/metadata/json/1"
    assert verifier._amurl(idp.exchange_token(AUDIENCE, amurl=amurl)) == amurl
    for other in (
        "https://mail.contoso.example:8443/autodiscover/metadata/json/1",
        "https://mail.contoso.example/autodiscover/metadata/json/1?x=1",
        "http://mail.contoso.example/autodiscover/metadata/json/1",
    ):
        with pytest.raises(TokenError):
            verifier._amurl(idp.exchange_token(AUDIENCE, amurl=other))


def test_pexips_management_api_follows_the_switch_too(tmp_path: Path) -> None:
    """The personal-room directory on Pexip (and the provisioner, built the same way) reach
    the Management Node under the one rule: with the proxy off they ignore HTTPS_PROXY."""
    from vmrsched.directory import directory_for

    def pexip_integration(direct: bool) -> config.IntegrationConfig:
        doc = {
            "server": {"data_dir": str(tmp_path / "data")},
            "integrations": [
                {
                    "name": "px",
                    "enable_personal_vmrs": True,
                    "exchange": {"mailbox_name": "Room", "mailbox_email": "vmr@example.com"},
                    "addin": {"token_validation": "none"},
                    "personal": {"source": "pexip"},
                    "pexip": {
                        "management_url": "https://pexip.example.com",
                        "management_username": "admin",
                        "management_password_env": "PX",
                    },
                    "advanced": {"disable_web_proxy": direct},
                }
            ],
        }
        return config.parse(doc, tmp_path, {"PX": "pexip-password"}).integrations[0]

    direct = directory_for(pexip_integration(True), tmp_path)
    proxied = directory_for(pexip_integration(False), tmp_path)
    assert direct.client.session.trust_env is False  # type: ignore[attr-defined]
    assert proxied.client.session.trust_env is True  # type: ignore[attr-defined]
