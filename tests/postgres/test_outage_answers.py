"""What the routes that read and write the shared database answer around an outage, over real
HTTP, on a real PostgreSQL (docs/high-availability.md, "During a database outage"; DESIGN: 503
when storage is unavailable, never 500):

- while the database does not answer, the admin API's decisions log and a console login (a
  session kept in the database) get 503 `storage_unavailable` with Retry-After, not 500;
- once it answers again, or after it ended every connection the instance kept (a restart, a
  failover), the first console login signs in: no call fails for a connection that died idle."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests import spoolkit
from tests.pgcluster import Cluster
from tests.postgres.test_reconnecting import end_every_other_session
from vmrsched import config, service
from vmrsched.http.app import create_app

TOKEN = "outage-test-admin-token-0123456789"
LEASE = 3  # Retry-After: a third of it, when the instance looks at the database again
BEARER = {"Authorization": f"Bearer {TOKEN}"}
Connect = Callable[[], psycopg.Connection[Any]]


@pytest.fixture
def svc(tmp_path: Path, dsn: str) -> Iterator[service.Service]:
    doc: dict[str, Any] = {
        "server": {"data_dir": str(tmp_path / "data"), "admin_token_env": "TOKEN"},
        "storage": {"backend": "postgresql", "dsn_env": "DSN", "lease_seconds": LEASE},
        "integrations": [
            {
                "name": "alpha",
                "exchange": {"mailbox_name": "Video Room", "mailbox_email": "vmr@example.com"},
                "addin": {"token_validation": "none", "server_fqdn": "vc.example.com"},
                "spool": {"poll_interval_seconds": 0.05},
            }
        ],
    }
    started = service.start(config.parse(doc, tmp_path, {"DSN": dsn, "TOKEN": TOKEN}))
    try:
        spoolkit.wait_for(lambda: started.readiness()[0], timeout=20)
        yield started
    finally:
        started.stop()


@pytest.fixture
async def client(svc: service.Service) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(create_app(svc))) as test_client:
        yield test_client


async def login(client: TestClient[Any, Any]) -> Any:
    return await client.post(
        "/admin/login", data={"token": TOKEN, "next": "/admin"}, allow_redirects=False
    )


async def test_the_first_console_login_after_the_database_ended_its_connections_signs_in(
    client: TestClient[Any, Any], connect: Connect
) -> None:
    assert (await login(client)).status == 303  # the session's connection, kept idle
    assert end_every_other_session(connect) >= 1  # as a restart or a failover does
    answer = await login(client)
    assert answer.status == 303, await answer.text()
    assert answer.headers["Location"] == "/admin"


async def test_while_the_database_is_down_its_routes_answer_503_storage_unavailable(
    client: TestClient[Any, Any], cluster: Cluster
) -> None:
    assert (await login(client)).status == 303
    cluster.stop()
    try:
        for answer in (
            await client.get("/api/admin/v1/integrations/alpha/decisions", headers=BEARER),
            await login(client),
        ):
            assert answer.status == 503, await answer.text()
            assert (await answer.json())["error"]["code"] == "storage_unavailable"
            assert answer.headers["Retry-After"] == "1"
    finally:
        cluster.start()
    answer = await login(client)  # back: the first login after it signs in
    assert answer.status == 303, await answer.text()
    decisions = await client.get("/api/admin/v1/integrations/alpha/decisions", headers=BEARER)
    assert decisions.status == 200
