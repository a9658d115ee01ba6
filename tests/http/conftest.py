"""What the HTTP tests share: the fake identity provider (Exchange identity and Entra ID
tokens), and the demo server the browser and OpenAPI tests use: `vmrsched serve` as a real
process in demo mode, with a second integration that validates Entra ID tokens."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Iterator

import pytest
from aiohttp.test_utils import TestServer

from tests.configs import spool_toml
from tests.fakes.identity_provider import IdentityProvider
from tests.serving import ROOT, free_port, wait_ready

DEFAULT_ADDIN = """server_fqdn = "vc.example.com"
success_heading = "Room added!"
unavailable_heading = "Offline, placeholder added"
already_assigned_heading = "Already has a room"
[integrations.advanced]
enable_addin_debug_logs = true
[integrations.spool]
poll_interval_seconds = 0.05
"""

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
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("pane")
    port = free_port()
    config = tmp / "vmrsched.toml"
    config.write_text(
        spool_toml(tmp / "data", port=port, server="demo = true", integration=DEFAULT_ADDIN)
        + ONLINE
    )
    log = open(tmp / "server.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "vmrsched", "serve", "--config", str(config)],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_ready(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@pytest.fixture
async def idp() -> AsyncIterator[IdentityProvider]:
    provider = IdentityProvider()
    server = TestServer(provider.app())
    await server.start_server()
    provider.base = str(server.make_url("")).rstrip("/")
    yield provider
    await server.close()
