"""Two services on one PostgreSQL (issue 30), each with its own data directory: what one keeps,
the other serves. A decision the owner of the integration logged is listed by the other's
admin API; a user's sign-in for personal VMRs, the organizer page's and an admin's, each
started through one instance with its callback handled by the other, opens a session that
both accept; a console session opened through one is accepted by the other with the same
CSRF token; signing out through one signs out of both."""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests import spoolkit
from tests.fakes import identity_platform
from tests.fakes.identity_platform import IdentityPlatform
from vmrsched import config, service
from vmrsched.errors import Unauthorized

ROOT = Path(__file__).resolve().parents[2]
ADMINS = "6f1c2d1e-0000-4000-8000-00000000ad01"


@dataclass
class Platforms:
    user: IdentityPlatform
    user_ca: Path
    admin: IdentityPlatform
    admin_ca: Path


@pytest.fixture
def platforms(tmp_path: Path) -> Iterator[Platforms]:
    (tmp_path / "user-idp").mkdir()
    (tmp_path / "admin-idp").mkdir()
    with (
        identity_platform.running(
            tmp_path / "user-idp",
            "Olga@Example.com",
            client_id="pane-client",
            client_secret="pane-secret",
        ) as (user, user_ca),
        identity_platform.running(
            tmp_path / "admin-idp",
            "Ada@Example.com",
            client_id="admin-console",
            client_secret="console-secret",
            groups=[ADMINS],
        ) as (admin, admin_ca),
    ):
        yield Platforms(user, user_ca, admin, admin_ca)


def configured(tmp: Path, dsn: str, instance: str, idp: Platforms) -> config.Config:
    doc: dict[str, Any] = {
        "server": {
            "data_dir": str(tmp / instance / "data"),
            "admin_sign_in": {
                "authorization_uri": f"{idp.admin.authority}/oauth2/v2.0/authorize",
                "token_uri": f"{idp.admin.authority}/oauth2/v2.0/token",
                "client_id": "admin-console",
                "client_secret_env": "CONSOLE_SECRET",
                "issuer": f"{idp.admin.authority}/v2.0",
                "admin_group": ADMINS,
                "tls_ca_file": str(idp.admin_ca),
            },
        },
        "storage": {
            "backend": "postgresql",
            "dsn_env": "DSN",
            "lease_seconds": 2,
            "instance": instance,
        },
        "integrations": [
            {
                "name": "alpha",
                "exchange": {"mailbox_name": "Video Room", "mailbox_email": "vmr@example.com"},
                "addin": {"token_validation": "exchange"},
                "metadata": {"exchange_metadata_urls": ["https://mail.example.com/"]},
                "enable_personal_vmrs": True,
                "personal": {
                    "directory_file": str(ROOT / "config" / "vmrs.toml"),
                    "user_oauth_authorization_uri": f"{idp.user.authority}/oauth2/v2.0/authorize",
                    "user_oauth_token_uri": f"{idp.user.authority}/oauth2/v2.0/token",
                    "user_oauth_client_id": "pane-client",
                    "azure_client_secret_env": "PANE_SECRET",
                    "tls_ca_file": str(idp.user_ca),
                },
                "spool": {
                    "directory": str(tmp / "spool" / "alpha"),
                    "poll_interval_seconds": 0.05,
                },
            }
        ],
    }
    secrets = {"DSN": dsn, "PANE_SECRET": "pane-secret", "CONSOLE_SECRET": "console-secret"}
    return config.parse(doc, tmp, secrets)


@pytest.fixture
def pair(
    tmp_path: Path, dsn: str, platforms: Platforms
) -> Iterator[tuple[service.Service, service.Service]]:
    """(the instance that runs the integration, the other one)."""
    first = service.start(configured(tmp_path, dsn, "instance-a", platforms))
    second = None
    try:
        spoolkit.wait_for(lambda: first.ctx.shared is not None and first.ctx.shared.owns("alpha"))
        second = service.start(configured(tmp_path, dsn, "instance-b", platforms))
        spoolkit.wait_for(
            lambda: (
                second is not None and second.ctx.shared is not None and second.ctx.shared.reachable
            )
        )
        assert second.ctx.shared is not None and not second.ctx.shared.owns("alpha")
        yield first, second
    finally:
        if second is not None:
            second.stop()
        first.stop()


def at_provider(url: str, ca: Path) -> dict[str, str]:
    """The user signs in at the provider: the query it sends the browser back with."""
    answer = requests.get(url, allow_redirects=False, verify=str(ca), timeout=10)
    assert answer.status_code == 302, answer.text
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(answer.headers["Location"]).query))


def test_a_decision_the_owner_logged_is_listed_by_the_other_instance(
    tmp_path: Path, pair: tuple[service.Service, service.Service]
) -> None:
    _, other = pair
    data, uid = spoolkit.request(body="<p>no token here</p>", subject="Planning")
    spoolkit.drop(tmp_path / "spool" / "alpha" / "inbox", data)

    def listed() -> list[dict[str, Any]]:
        return asyncio.run(other.admin_decisions("alpha", uid, 10))

    spoolkit.wait_for(lambda: bool(listed()))
    [decision] = listed()
    assert (decision["outcome"], decision["reason"]) == ("declined", "invalid_alias_id")
    assert not (tmp_path / "instance-a" / "data" / "decisions").exists()  # in the database


def test_a_user_sign_in_started_on_one_instance_finishes_on_the_other_and_both_accept_it(
    pair: tuple[service.Service, service.Service], platforms: Platforms
) -> None:
    owner, other = pair
    query = at_provider(owner.start_personal_sign_in("alpha"), platforms.user_ca)
    session = asyncio.run(other.finish_personal_sign_in("alpha", query))
    assert session.email == "olga@example.com"
    for svc in (owner, other):
        who = asyncio.run(svc.personal_identity(svc.integration("alpha"), session.token))
        assert who.email == "olga@example.com"
    with pytest.raises(Exception, match="unknown or expired"):  # the attempt was used once
        asyncio.run(owner.finish_personal_sign_in("alpha", query))

    asyncio.run(owner.personal_sign_out("alpha", session.token))
    with pytest.raises(Unauthorized):
        asyncio.run(other.personal_identity(other.integration("alpha"), session.token))


def test_the_organizer_page_sign_in_is_accepted_by_both_instances(
    pair: tuple[service.Service, service.Service], platforms: Platforms
) -> None:
    owner, other = pair
    query = at_provider(other.start_organizer_sign_in("alpha"), platforms.user_ca)
    session = asyncio.run(owner.finish_organizer_sign_in("alpha", query))
    for svc in (other, owner):
        who = asyncio.run(svc.organizer(svc.integration("alpha"), session.token))
        assert who.email == "olga@example.com"


def test_an_admin_sign_in_and_console_session_work_across_instances(
    pair: tuple[service.Service, service.Service], platforms: Platforms
) -> None:
    owner, other = pair
    query = at_provider(owner.start_admin_sign_in(), platforms.admin_ca)
    who = asyncio.run(other.finish_admin_sign_in(query))
    assert who == "ada@example.com"

    sid = asyncio.run(other.sign_ins.open_admin_session(who))
    assert asyncio.run(owner.sign_ins.admin_session(sid)) == who
    assert asyncio.run(owner.sign_ins.admin_csrf(sid)) == asyncio.run(
        other.sign_ins.admin_csrf(sid)
    )
    asyncio.run(owner.sign_ins.end_admin_session(sid))
    assert asyncio.run(other.sign_ins.admin_session(sid)) is None
