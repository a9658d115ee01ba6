"""The policy endpoint asked exactly as a Pexip Conferencing Node asks it (GET with the node's
query parameters and Basic auth), against the running service over real HTTP: a room booked
through the add-in API and accepted from the mailbox is a conference inside its window and
refused outside it; the node's credentials are checked; answers are counted."""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests import spoolkit
from tests.configs import reserve_alias
from vmrsched import config, service
from vmrsched.pexip.policy import AliasIndex, Room, RoomSettings, normalise

POLICY = "/policy/v1/service/configuration"
NODE_PASSWORD = "node-policy-secret-42"


def node_query(local_alias: str) -> dict[str, str]:
    """What a node sends with a dial-in call (Pexip's documented request parameters)."""
    return {
        "protocol": "sip",
        "node_ip": "10.44.0.11",
        "remote_address": "198.51.100.7",
        "version_id": "36",
        "bandwidth": "0",
        "pseudo_version_id": "87711.0.0",
        "vendor": "Cisco-CP8865/12.8",
        "local_alias": local_alias,
        "remote_alias": "sip:alice@example.com",
        "remote_display_name": "Alice",
        "remote_port": "5061",
        "call_direction": "dial_in",
        "call_tag": "",
        "trigger": "invite",
        "location": "London",
    }


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


NODE = basic("pexip-node", NODE_PASSWORD)


@pytest.fixture
def svc(tmp_path: Path) -> Iterator[service.Service]:
    doc = {
        "server": {
            "data_dir": str(tmp_path / "data"),
            "policy_username": "pexip-node",
            "policy_password_env": "POLICY_PW",
        },
        "integrations": [
            {
                "name": "hq",
                "exchange": {"mailbox_name": "Video Room", "mailbox_email": "vmr@example.com"},
                "addin": {"token_validation": "none", "server_fqdn": "vmr.example.com"},
                "pexip": {"webapp_fqdn": "join.example.com"},
                "single_use": {"alias_prefix": "81", "theme": "Corporate"},
                "spool": {"poll_interval_seconds": 0.05},
            }
        ],
    }
    cfg = config.parse(doc, tmp_path, {"POLICY_PW": NODE_PASSWORD})
    running = service.start(cfg)
    spoolkit.wait_for(lambda: running.ctx.status.state("hq") == "running")
    yield running
    running.stop()


async def book(
    client: TestClient[Any, Any], svc: service.Service, start: datetime
) -> dict[str, Any]:
    """Reserve in the add-in API, put its instructions in a meeting, send it to the room."""
    response = await client.post("/api/addin/v1/hq/single-use-vmrs", json={})
    assert response.status == 201
    vmr: dict[str, Any] = await response.json()
    spool = svc.config.integrations[0].spool_dir(svc.config.data_dir)
    data, uid = spoolkit.request(body=vmr["joining_instructions"], start=start, minutes=60)
    name = spoolkit.drop(spool / "inbox", data)
    spoolkit.wait_handled(spool, name)
    spoolkit.wait_for(lambda: bool(spoolkit.answers_for(spool, uid)))
    assert spoolkit.answers_for(spool, uid)[0].headers["X-Vmrsched-Outcome"] == "accepted"
    return vmr


async def ask(client: TestClient[Any, Any], alias: str, **headers: str) -> tuple[int, Any]:
    response = await client.get(POLICY, params=node_query(alias), headers=headers or NODE)
    return response.status, await response.json()


async def test_a_booked_room_is_a_conference_in_its_window_and_refused_outside(
    client: TestClient[Any, Any], svc: service.Service
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    live = await book(client, svc, now + timedelta(minutes=5))
    later = await book(client, svc, now + timedelta(days=3))
    assert "https://join.example.com/webapp/" in live["joining_instructions"]

    status, body = await ask(client, f"sip:{live['alias']}")
    assert status == 200 and body["action"] == "continue"
    result = body["result"]
    assert result["service_type"] == "conference"
    assert result["service_tag"] == "vmrsched/hq"
    assert result["name"] and result["ivr_theme_name"] == "Corporate"
    assert "olga@example.com" in result["description"] or result["description"] == ""
    # phones dial the numeric alias, at the gateway's domain or bare
    assert (await ask(client, live["numeric_alias"]))[1]["action"] == "continue"
    assert (await ask(client, f"{live['numeric_alias']}@gw.example.net"))[1]["result"]

    assert await ask(client, later["alias"]) == (
        200,
        {"status": "success", "action": "reject", "result": {}},
    )
    reserved = await (await client.post("/api/addin/v1/hq/single-use-vmrs", json={})).json()
    assert (await ask(client, reserved["alias"]))[1]["action"] == "reject"
    assert await ask(client, "sip:someone.else@example.com") == (
        200,
        {"status": "success", "action": "continue", "result": {}},
    )
    text = await (await client.get("/metrics")).text()
    assert 'vmrsched_policy_requests_total{result="conference"} 3.0' in text
    assert 'vmrsched_policy_requests_total{result="rejected"} 2.0' in text
    assert 'vmrsched_policy_requests_total{result="not_ours"} 1.0' in text
    assert "vmrsched_policy_request_duration_seconds_count" in text


@pytest.mark.parametrize(
    "headers",
    [
        {},
        basic("pexip-node", "wrong"),
        basic("someone", NODE_PASSWORD),
        {"Authorization": "Basic !!!not-base64"},
        {"Authorization": f"Bearer {NODE_PASSWORD}"},
    ],
)
async def test_a_node_without_the_right_credentials_gets_401(
    client: TestClient[Any, Any], headers: dict[str, str]
) -> None:
    response = await client.get(POLICY, params=node_query("81123456"), headers=headers)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert (await response.json())["error"]["code"] == "unauthorized"


async def test_a_request_without_an_alias_is_left_to_the_node(
    client: TestClient[Any, Any],
) -> None:
    response = await client.get(POLICY, headers=NODE)
    assert response.status == 200
    assert await response.json() == {"status": "success", "action": "continue", "result": {}}


# --- one alias, one owner -------------------------------------------------------------------


def room(integration: str, alias_id: str, numeric: str, status: str = "reserved") -> Room:
    settings = RoomSettings(integration, timedelta(minutes=30), timedelta(minutes=60))
    return Room(alias_id, f"{numeric}@video.example.com", numeric, status, settings)


def test_the_index_keeps_the_first_integration_that_published_an_alias(
    caplog: pytest.LogCaptureFixture,
) -> None:
    index = AliasIndex()
    index.publish([room("hq", "hq-1", "811000000")])
    with caplog.at_level(logging.ERROR):
        index.publish([room("branch", "branch-1", "811000000", "bound")])
    for key in ("811000000", "811000000@video.example.com", "sip:811000000@gw.example.net"):
        found = index.lookup(normalise(key))
        assert found is not None and found.alias_id == "hq-1", key
    assert "811000000" in caplog.text and "hq" in caplog.text and "branch" in caplog.text
    assert {r.levelno for r in caplog.records} == {logging.ERROR}
    # the owner's own changes land; the other's never do, whichever publishes last
    index.publish([room("hq", "hq-1", "811000000", "deleted")])
    index.publish([room("branch", "branch-1", "811000000", "bound")])
    found = index.lookup("811000000")
    assert found is not None and (found.alias_id, found.status) == ("hq-1", "deleted")
    assert index.rooms("branch") == [] and len(index) == 2
    # an integration removed from the config frees its aliases
    index.drop("hq")
    index.publish([room("branch", "branch-1", "811000000", "bound")])
    found = index.lookup("811000000")
    assert found is not None and found.alias_id == "branch-1"


async def test_an_alias_another_integration_publishes_again_keeps_its_first_answer(
    client: TestClient[Any, Any], svc: service.Service
) -> None:
    live = await book(client, svc, datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=5))
    intruder = room("elsewhere", "x-1", live["numeric_alias"])
    svc.ctx.alias_index.publish([intruder, replace(intruder, alias=live["alias"])])
    for alias in (live["alias"], live["numeric_alias"]):
        status, body = await ask(client, alias)
        assert status == 200 and body["result"]["service_tag"] == "vmrsched/hq", alias


# --- issue 27 ---------------------------------------------------------------------------------


def test_two_integrations_never_hand_out_one_conference_name(tmp_path: Path) -> None:
    """One subject and organizer booked in two integrations: a node joins calls by conference
    name, so the second gets another name."""

    def integ(name: str, prefix: str) -> dict[str, Any]:
        return {
            "name": name,
            "exchange": {"mailbox_name": f"Room {name}", "mailbox_email": f"{name}@example.com"},
            "addin": {"token_validation": "none", "server_fqdn": "vmr.example.com"},
            "single_use": {"alias_prefix": prefix},
            "spool": {"poll_interval_seconds": 0.05},
        }

    doc = {
        "server": {"data_dir": str(tmp_path / "data")},
        "integrations": [integ("hq", "81"), integ("branch", "82")],
    }
    cfg = config.parse(doc, tmp_path, {})
    running = service.start(cfg)
    try:
        names = []
        for n, name in enumerate(("hq", "branch")):
            spoolkit.wait_for(lambda name=name: running.ctx.status.state(name) == "running")
            record = reserve_alias(running.ctx.registry.get(name, "allocator"))
            body = f"<p>PXPS:-{record['alias_id']}#</p>"
            start = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=5)
            data, _ = spoolkit.request(body=body, start=start, minutes=60)
            spool = cfg.integrations[n].spool_dir(cfg.data_dir)
            spoolkit.wait_handled(spool, spoolkit.drop(spool / "inbox", data))
            spoolkit.wait_for(lambda a=record["alias"]: running.policy_answer(a)[0] == "conference")
            names.append(running.policy_answer(record["alias"])[1]["result"]["name"])
        assert names[0] == "Weekly sync (Olga Organizer)"
        assert names[1].casefold() != names[0].casefold()
    finally:
        running.stop()


def test_a_personal_vmr_of_the_file_directory_is_served_with_its_settings(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "vmrs.toml"
    directory.write_text(
        '[[users]]\nemail = "ann@example.com"\n[[users.vmrs]]\nname = "Ann\'s room"\n'
        'aliases = ["meet.ann@video.example.com", "81100007"]\npin = "1234"\n'
        'guest_pin = "5678"\nallow_guests = true\n'
    )
    doc = {
        "server": {"data_dir": str(tmp_path / "data")},
        "integrations": [
            {
                "name": "hq",
                "enable_personal_vmrs": True,
                "exchange": {"mailbox_name": "Video Room", "mailbox_email": "vmr@example.com"},
                "addin": {"token_validation": "none", "server_fqdn": "vmr.example.com"},
                "personal": {"directory_file": str(directory)},
                "spool": {"poll_interval_seconds": 0.05},
            }
        ],
    }
    running = service.start(config.parse(doc, tmp_path, {}))
    try:
        spoolkit.wait_for(
            lambda: running.policy_answer("sip:Meet.Ann@video.example.com")[0] == "personal"
        )
        body = running.policy_answer("81100007")[1]
        assert body["action"] == "continue"
        assert body["result"] == {
            "service_type": "conference",
            "name": "Ann's room",
            "service_tag": "vmrsched/hq/personal",
            "description": "",
            "allow_guests": True,
            "pin": "1234",
            "guest_pin": "5678",
        }
    finally:
        running.stop()
