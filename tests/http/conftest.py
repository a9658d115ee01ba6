"""What the HTTP tests share: the fake identity provider (Exchange identity and Entra ID
tokens), and the demo server the browser and OpenAPI tests use: `vmrsched serve` as a real
process in demo mode (personal VMRs from the demo directory on), with a second integration that
validates Entra ID tokens and a third whose users sign in explicitly at the fake identity
platform (real TLS)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests.configs import PANE_ADDIN, spool_toml
from tests.fakes import identity_platform
from tests.fakes.identity_platform import IdentityPlatform
from tests.fakes.identity_provider import IdentityProvider
from tests.serving import ROOT, free_port, wait_ready
from vmrsched import service
from vmrsched.http.app import create_app

DEFAULT_ADDIN = PANE_ADDIN

ONLINE = """
[[integrations]]
name = "online"
[integrations.exchange]
mailbox_name = "Online Room"
mailbox_email = "vmr-online@example.com"
[integrations.addin]
token_validation = "entra"
entra_tenant_id = "11111111-2222-3333-4444-555555555555"
entra_client_id = "22222222-3333-4444-5555-666666666666"
server_fqdn = "vc.example.com"
[integrations.single_use]
alias_prefix = "online"  # aliases are unique across the service
"""


ADMIN_TOKEN = "demo-admin-token-0123456789abcdef01"
ADMIN_GROUP = "6f1c2d1e-0000-4000-8000-00000000ad01"

ADMIN_SIGN_IN = """
[server.admin_sign_in]
authorization_uri = "{authority}/oauth2/v2.0/authorize"
token_uri = "{authority}/oauth2/v2.0/token"
client_id = "pane-client"
client_secret_env = "VMRSCHED_PANE_SECRET"
issuer = "{authority}/v2.0"
admin_group = "{group}"
tls_ca_file = "{ca}"
"""

SSO = """
[[integrations]]
name = "sso"
enable_personal_vmrs = true
[integrations.exchange]
mailbox_name = "On-premises Room"
mailbox_email = "vmr-sso@example.com"
[integrations.addin]
token_validation = "exchange"
server_fqdn = "vc.example.com"
sign_in_button_label = "Sign in to see your rooms"
[integrations.advanced]
enable_addin_debug_logs = true
[integrations.metadata]
exchange_metadata_urls = ["https://mail.example.com/"]
[integrations.personal]
directory_file = "{directory}"
user_oauth_authorization_uri = "{authority}/oauth2/v2.0/authorize"
user_oauth_token_uri = "{authority}/oauth2/v2.0/token"
user_oauth_client_id = "pane-client"
azure_client_secret_env = "VMRSCHED_PANE_SECRET"
tls_ca_file = "{ca}"
[integrations.single_use]
alias_prefix = "sso"
"""


@dataclass
class Platform:
    idp: IdentityPlatform
    ca_file: Path


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """The identity platform users of the `sso` integration and admins sign in at; its user
    is Olga, a member of the admin group."""
    with identity_platform.running(
        tmp_path_factory.mktemp("idp"),
        "olga@example.com",
        client_id="pane-client",
        client_secret="pane-secret",
        groups=[ADMIN_GROUP],
    ) as (idp, ca):
        yield Platform(idp, ca)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, platform: Platform) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("pane")
    port = free_port()
    config = tmp / "vmrsched.toml"
    sso = SSO.format(
        directory=ROOT / "config" / "vmrs.toml",
        authority=platform.idp.authority,
        ca=platform.ca_file,
    )
    config.write_text(
        spool_toml(
            tmp / "data",
            port=port,
            server='demo = true\nadmin_token_env = "VMRSCHED_ADMIN_TOKEN"',
            head="enable_personal_vmrs = true",
            integration=DEFAULT_ADDIN,
        )
        + ONLINE
        + sso
        + ADMIN_SIGN_IN.format(
            authority=platform.idp.authority, group=ADMIN_GROUP, ca=platform.ca_file
        )
    )
    log = open(tmp / "server.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "vmrsched", "serve", "--config", str(config)],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={
            **os.environ,
            "VMRSCHED_PANE_SECRET": "pane-secret",
            "VMRSCHED_ADMIN_TOKEN": ADMIN_TOKEN,
        },
    )
    try:
        wait_ready(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@pytest.fixture
async def client(svc: service.Service) -> AsyncIterator[TestClient[Any, Any]]:
    """The app of the test module's `svc` fixture (a started service) over real HTTP."""
    async with TestClient(TestServer(create_app(svc))) as test_client:
        yield test_client


@pytest.fixture
async def idp() -> AsyncIterator[IdentityProvider]:
    provider = IdentityProvider()
    server = TestServer(provider.app())
    await server.start_server()
    provider.base = str(server.make_url("")).rstrip("/")
    yield provider
    await server.close()
