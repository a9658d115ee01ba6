"""The per-user cap on open reservations and how full an integration's alias space is, through
the add-in API of a running service with verified (Exchange identity) tokens: past the cap a
user gets 429 quota_exceeded while others are served; a reservation used in a meeting or
released frees a slot; the count survives a restart; the gauge and the alias_space_low alarm
follow the reservations."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests import spoolkit
from tests.fakes.identity_provider import IdentityProvider
from vmrsched import config, service
from vmrsched.actors import allocator
from vmrsched.http.app import create_app

PUBLIC = "https://localhost:8443"
PANE = f"{PUBLIC}/addin/onprem/taskpane.html"
API = "/api/addin/v1/onprem/single-use-vmrs"
CAP = 3


def make_config(tmp_path: Path, idp: IdentityProvider) -> config.Config:
    doc = {
        "server": {
            "listen": "127.0.0.1:0",
            "data_dir": str(tmp_path / "data"),
            "public_url": PUBLIC,
            "rate_limit_per_minute": 1000,
        },
        "integrations": [
            {
                "name": "onprem",
                "exchange": {"mailbox_name": "Room", "mailbox_email": "room@example.com"},
                "addin": {"server_fqdn": "vmr.example.com", "token_validation": "exchange"},
                "metadata": {
                    "exchange_metadata_urls": [f"{idp.base}/autodiscover/metadata/json/1"]
                },
                "single_use": {"max_open_reservations_per_user": CAP},
                "spool": {"poll_interval_seconds": 0.05},
            }
        ],
    }
    return config.parse(doc, tmp_path, {})


def started(cfg: config.Config) -> service.Service:
    svc = service.start(cfg)
    spoolkit.wait_for(lambda: svc.ctx.status.state("onprem") == "running")
    return svc


@pytest.fixture
def svc(tmp_path: Path, idp: IdentityProvider) -> Iterator[service.Service]:
    running = started(make_config(tmp_path, idp))
    yield running
    running.stop()


@pytest.fixture
async def client(svc: service.Service) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(create_app(svc))) as test_client:
        yield test_client


async def reserve(
    client: TestClient[Any, Any], idp: IdentityProvider, user: str
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {idp.exchange_token(PANE, uid=user)}"}
    response = await client.post(API, headers=headers, json={"subject": "Sync"})
    return response.status, await response.json()


def use_in_a_meeting(svc: service.Service, vmr: dict[str, Any]) -> None:
    """Send a meeting with the reservation's joining instructions to the room; it is accepted."""
    spool = svc.config.integrations[0].spool_dir(svc.config.data_dir)
    data, uid = spoolkit.request(body=vmr["joining_instructions"])
    spoolkit.wait_handled(spool, spoolkit.drop(spool / "inbox", data))
    spoolkit.wait_for(lambda: bool(spoolkit.answers_for(spool, uid)))
    assert spoolkit.answers_for(spool, uid)[0].headers["X-Vmrsched-Outcome"] == "accepted"


async def test_past_the_cap_a_user_gets_429_others_201_and_a_used_or_released_one_frees_a_slot(
    client: TestClient[Any, Any], idp: IdentityProvider, svc: service.Service
) -> None:
    olga = [await reserve(client, idp, "olga") for _ in range(CAP + 2)]
    assert [status for status, _ in olga] == [201] * CAP + [429, 429]
    error = olga[-1][1]["error"]
    assert error["code"] == "quota_exceeded"
    assert f"{CAP} video rooms" in error["message"]
    assert "expire" in error["message"] and "release" in error["message"]
    assert (await reserve(client, idp, "ivan"))[0] == 201

    use_in_a_meeting(svc, olga[0][1])
    assert (await reserve(client, idp, "olga"))[0] == 201
    assert (await reserve(client, idp, "olga"))[0] == 429
    await svc.admin_delete_alias("onprem", olga[1][1]["alias"], "admin")
    assert (await reserve(client, idp, "olga"))[0] == 201
    assert (await reserve(client, idp, "olga"))[0] == 429
    metrics = await client.get("/metrics")
    assert metrics.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert 'route="single-use-vmrs",status="429"} 4.0' in await metrics.text()


async def test_the_count_survives_a_restart(tmp_path: Path, idp: IdentityProvider) -> None:
    cfg = make_config(tmp_path, idp)
    for attempt in range(2):
        svc = started(cfg)
        try:
            async with TestClient(TestServer(create_app(svc))) as client:
                statuses = [(await reserve(client, idp, "olga"))[0] for _ in range(CAP + 1)]
        finally:
            svc.stop()
        expected = [201] * CAP + [429] if attempt == 0 else [429] * (CAP + 1)
        assert statuses == expected


async def test_unverified_callers_share_no_cap(tmp_path: Path, idp: IdentityProvider) -> None:
    """With token_validation "none" (loopback trials) every caller is the same anonymous user:
    a cap would stop the whole trial, so it does not apply."""
    cfg = make_config(tmp_path, idp)
    open_addin = config.AddinConfig(server_fqdn="vmr.example.com", token_validation="none")
    cfg = replace(cfg, integrations=(replace(cfg.integrations[0], addin=open_addin),))
    svc = started(cfg)
    try:
        async with TestClient(TestServer(create_app(svc))) as client:
            for _ in range(CAP + 2):
                assert (await client.post(API, json={})).status == 201
    finally:
        svc.stop()


def gauge(text: str) -> float:
    [line] = [
        line
        for line in text.splitlines()
        if line.startswith('vmrsched_alias_space_used_ratio{integration="onprem"}')
    ]
    return float(line.split()[-1])


async def test_the_alias_space_gauge_and_alarm_follow_reservations(
    client: TestClient[Any, Any],
    idp: IdentityProvider,
    svc: service.Service,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def alarmed() -> bool:
        return "alias_space_low" in {a.name for a in svc.ctx.alarms.active("onprem")}

    assert gauge(await (await client.get("/metrics")).text()) == 0.0
    for user in ("olga", "ivan"):
        assert (await reserve(client, idp, user))[0] == 201
    assert gauge(await (await client.get("/metrics")).text()) == pytest.approx(2 / 10**6)
    assert not alarmed()

    # a space this full (the threshold brought down to it) raises the alarm …
    monkeypatch.setattr(allocator, "ALIAS_SPACE_LOW_AT", 3 / 10**6)
    assert (await reserve(client, idp, "olga"))[0] == 201
    assert alarmed()
    text = await (await client.get("/metrics")).text()
    assert 'vmrsched_alarm_active{alarm="alias_space_low",integration="onprem"} 1.0' in text
    [alarm] = [a for a in svc.ctx.alarms.active("onprem") if a.name == "alias_space_low"]
    assert "alias_suffix_length" in alarm.message

    # … and one below it clears it
    monkeypatch.setattr(allocator, "ALIAS_SPACE_LOW_AT", 0.8)
    assert (await reserve(client, idp, "ivan"))[0] == 201
    assert not alarmed()
    assert gauge(await (await client.get("/metrics")).text()) == pytest.approx(4 / 10**6)
