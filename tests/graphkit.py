"""Exchange Online as the Graph tests meet it: the fake identity platform over TLS and the fake
Microsoft Graph over HTTP, started together, and the integration that points at them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.fakes.graph_server import FakeGraph
from tests.fakes.identity_platform import IdentityPlatform, server_context, tls_files
from tests.fakes.threaded import ThreadedServer
from vmrsched import config, service
from vmrsched.actors.supervision import RestartPolicy
from vmrsched.rules.meetings import Meeting

ROOM = "room@contoso.example"
ORGANIZER = "olga@contoso.example"

CLIENT_ID = "graph-app"
SECRET = "graph-secret"
ADMIN_TOKEN = "graph-tests-admin-token-0123456789abcdef"


@dataclass
class GraphWorld:
    platform: IdentityPlatform
    platform_server: ThreadedServer
    fake: FakeGraph
    graph_server: ThreadedServer
    cert: Path  # the TLS certificate (its own CA) of the identity platform
    key: Path

    def graph_keys(self, **extra: Any) -> dict[str, Any]:
        """[integrations.graph] for these fakes (the secret from the env var GRAPH_SECRET)."""
        return {
            "tenant_id": self.platform.tenant,
            "client_id": CLIENT_ID,
            "client_secret_env": "GRAPH_SECRET",
            "authority": self.platform.base,
            "graph_url": self.graph_server.url,
            "tls_ca_file": str(self.cert),
            **extra,
        }

    def integration(self, **graph: Any) -> dict[str, Any]:
        """The "online" integration on the room's mailbox, token validation off."""
        return {
            "name": "online",
            "backend": "graph",
            "timezone": "Europe/London",
            "exchange": {"mailbox_name": "Video Room", "mailbox_email": ROOM},
            "graph": self.graph_keys(**graph),
            "addin": {"token_validation": "none", "server_fqdn": "vc.example.com"},
        }

    def toml(self, data_dir: Path, port: int, **graph: Any) -> str:
        """The same as a config file for `vmrsched serve`."""
        keys = "\n".join(f"{k} = {_toml(v)}" for k, v in self.graph_keys(**graph).items())
        return f"""
[server]
listen = "127.0.0.1:{port}"
data_dir = "{data_dir}"
log_format = "json"
[[integrations]]
name = "online"
backend = "graph"
[integrations.exchange]
mailbox_name = "Video Room"
mailbox_email = "{ROOM}"
[integrations.graph]
{keys}
[integrations.addin]
token_validation = "none"
"""


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return f'"{value}"'


@contextmanager
def graph_world(directory: Path) -> Iterator[GraphWorld]:
    cert, key = tls_files(directory)
    platform = IdentityPlatform(client_id=CLIENT_ID, client_secret=SECRET)
    platform_server = ThreadedServer(platform.app(), ssl_context=server_context(cert, key))
    platform_server.start()
    platform.base = platform_server.url
    fake = FakeGraph(platform.valid)
    world = GraphWorld(
        platform, platform_server, fake, ThreadedServer(fake.app()).start(), cert, key
    )
    try:
        yield world
    finally:
        world.graph_server.stop()
        platform_server.stop()


def meeting(
    uid: str, body: str, *, days: float = 1, sequence: int = 0, method: str = "REQUEST"
) -> Meeting:
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=days)
    return Meeting(
        uid=uid,
        method=method,
        start=start,
        end=start + timedelta(minutes=30),
        sequence=sequence,
        organizer_name="Olga Organizer",
        organizer_email=ORGANIZER,
        subject="Weekly sync",
        html_body=body,
        attendees=("bob@contoso.example",),
    )


def pxps(record: dict[str, Any]) -> str:
    return f"<p>Join</p><p>PXPS:-{record['alias_id']}#</p>"


def start_service(world: GraphWorld, directory: Path, **server: Any) -> service.Service:
    """The service with one Graph integration on `world`, polling every 50 ms, its mailbox
    backoff capped at 1 s (the Graph tests' service). `server`: more [server] keys; the
    environment holds ADMIN_TOKEN for `admin_token_env = "ADMIN_TOKEN"`."""
    doc = {
        "server": {"data_dir": str(directory / "data"), **server},
        "integrations": [world.integration(poll_interval_seconds=0.05)],
    }
    cfg = config.parse(doc, directory, {"GRAPH_SECRET": SECRET, "ADMIN_TOKEN": ADMIN_TOKEN})
    return service.start(cfg, policy=RestartPolicy(mailbox_max=1.0))
