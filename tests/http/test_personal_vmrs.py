"""GET /api/addin/v1/{integration}/personal-vmrs over real HTTP: the verified token's user gets
their VMRs rendered with the personal templates (every personal variable), an unknown user
404 user_unknown, a user without rooms an empty list, a directory file broken while the service
runs leaves the last good one in use (never a 500), no token 401, personal VMRs off 403."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests import spoolkit
from tests.fakes.identity_provider import IdentityProvider
from vmrsched import config, service

PUBLIC = "https://localhost:8443"
TEMPLATE = (
    "{{name}}|{{description}}|{{aliases|join(',')}}|{{domain_aliases|join(',')}}|"
    "{{numeric_aliases|join(',')}}|{{other_aliases|join(',')}}|{{pin}}|{{guest_pin}}|"
    "{{allow_guests}}|{{service_type}}|{{owners_email}}|{{addin_server_domain}}"
)
DIRECTORY = """
[[users]]
email = "ann@contoso.example"
[[users.vmrs]]
name = "Ann's room"
description = "Ann's <b>own</b> room"
aliases = ["meet.ann@video.contoso.example", "81100007", "meet.ann"]
pin = "1234"
guest_pin = "5678"
allow_guests = true

[[users]]
email = "roomless@contoso.example"
"""


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    path = tmp_path / "vmrs.toml"
    path.write_text(DIRECTORY)
    return path


@pytest.fixture
def svc(tmp_path: Path, idp: IdentityProvider, directory: Path) -> Iterator[service.Service]:
    def integ(name: str, addin: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {
            "name": name,
            "exchange": {"mailbox_name": f"Room {name}", "mailbox_email": f"{name}@example.com"},
            "addin": {"server_fqdn": "vmr.example.com", **addin},
            "pexip": {"webapp_fqdn": "join.contoso.example"},
            "personal": {
                "directory_file": str(directory),
                "joining_instructions_template": "<p>" + TEMPLATE + "</p>",
                "location_template": "{{(domain_aliases or aliases)|first}}",
            },
            "enable_personal_vmrs": True,
            "single_use": {"alias_prefix": name[:8]},  # aliases are unique across the service
            **extra,
        }

    entra = {
        "token_validation": "entra",
        "entra_tenant_id": idp.tenant,
        "entra_client_id": "app-client-id",
        "entra_authority": idp.base,
    }
    doc = {
        "server": {"data_dir": str(tmp_path / "data"), "public_url": PUBLIC},
        "integrations": [
            integ("online", entra),
            integ("single-only", entra, enable_personal_vmrs=False),
            integ(
                "trial",
                {
                    "token_validation": "none",
                    "error_getting_personal_vmrs_message": (
                        "<p>No rooms: <a href='https://help.example.com'>ask us</a>"
                        "<script>alert(1)</script></p>"
                    ),
                },
            ),
        ],
    }
    running = service.start(config.parse(doc, tmp_path, {}))
    spoolkit.wait_for(
        lambda: all(running.ctx.status.state(n) == "running" for n in ("online", "trial"))
    )
    yield running
    running.stop()


async def get(
    client: TestClient[Any, Any], integration: str, token: str | None = None, **query: str
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = await client.get(
        f"/api/addin/v1/{integration}/personal-vmrs", headers=headers, params=query
    )
    return response.status, await response.json()


async def test_the_users_vmrs_are_rendered_with_every_personal_variable(
    client: TestClient[Any, Any], idp: IdentityProvider
) -> None:
    status, body = await get(client, "online", idp.entra_token("app-client-id"))
    assert status == 200
    [vmr] = body["vmrs"]
    assert vmr["name"] == "Ann's room" and vmr["description"] == "Ann's <b>own</b> room"
    assert vmr["aliases"] == ["meet.ann@video.contoso.example", "81100007", "meet.ann"]
    assert vmr["location"] == "meet.ann@video.contoso.example"
    assert vmr["joining_instructions"] == (
        "<p>Ann&#39;s room|Ann&#39;s &lt;b&gt;own&lt;/b&gt; room|"
        "meet.ann@video.contoso.example,81100007,meet.ann|meet.ann@video.contoso.example|"
        "81100007|meet.ann|1234|5678|True|conference|ann@contoso.example|join.contoso.example</p>"
    )


async def test_the_error_cases(
    client: TestClient[Any, Any], idp: IdentityProvider, directory: Path
) -> None:
    token = idp.entra_token("app-client-id")
    assert (await get(client, "online"))[0] == 401
    status, body = await get(client, "single-only", token)
    assert (status, body["error"]["code"]) == (403, "feature_disabled")
    status, body = await get(client, "trial", user="stranger@contoso.example")
    assert (status, body["error"]["code"]) == (404, "user_unknown")
    # the admin's text may hold HTML for the pane; the API's message is its words only
    assert body["error"]["message"] == "No rooms: ask us"
    assert await get(client, "trial", user="roomless@contoso.example") == (200, {"vmrs": []})
    status, body = await get(client, "trial")  # nobody named: the sign-in is needed
    assert (status, body["error"]["code"]) == (401, "sign_in_required")
    served = await get(client, "online", token)
    for broken in ("[[users]\nbroken", 'users = "ann@contoso.example"\n', "[[users]]\nvmrs = 1\n"):
        directory.write_text(broken)  # mid-edit, or a mistake: the last good one stays in use
        assert await get(client, "online", token) == served
