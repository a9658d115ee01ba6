"""Credentials come in pairs (DESIGN, "Security rules"): half a pair is refused with its key
path wherever it is written, even where the backend, mode or feature that would read it is
off, since it starts to matter the day that is switched on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from vmrsched import config
from vmrsched.config import ConfigError

ENV = {"SECRET": "a-long-enough-secret"}


def doc(server: dict[str, Any] | None = None, **tables: dict[str, Any]) -> dict[str, Any]:
    """One spool integration in policy mode, sound but for what `tables` add to it."""
    integ: dict[str, Any] = {
        "name": "alpha",
        "exchange": {"mailbox_name": "VMR", "mailbox_email": "vmr@example.com"},
        "addin": {"token_validation": "none"},
    }
    for table, keys in tables.items():
        integ[table] = {**integ.get(table, {}), **keys}
    return {"server": {"listen": "127.0.0.1:8080", **(server or {})}, "integrations": [integ]}


def problems(document: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config.parse(document, Path("."), ENV)
    return info.value.problems


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        (
            doc(pexip={"management_username": "admin"}),
            "integrations[0].pexip.management_password_env: management_username is set, so its "
            "management_password is needed (management_password_env or management_password_file): "
            "credentials come in pairs",
        ),
        (
            doc(pexip={"management_password_env": "SECRET"}),
            "integrations[0].pexip.management_username: management_password is set, so its "
            "management_username is needed",
        ),
        (
            doc(exchange={"service_account_username": "EXAMPLE\\svc"}),
            "integrations[0].exchange.service_account_password_env: service_account_username is "
            "set, so its service_account_password is needed (service_account_password_env or "
            "service_account_password_file): credentials come in pairs",
        ),
        (
            doc(exchange={"service_account_password_env": "SECRET"}),
            "integrations[0].exchange.service_account_username: service_account_password is set, "
            "so its service_account_username is needed",
        ),
        (
            doc(exchange={"oauth_client_secret_env": "SECRET"}),
            "integrations[0].exchange.oauth_client_id: oauth_client_secret is set, so its "
            "oauth_client_id is needed",
        ),
        (
            doc(graph={"client_secret_env": "SECRET"}),
            "integrations[0].graph.client_id: client_secret is set, so its client_id is needed",
        ),
        (
            doc(graph={"client_id": "app"}),
            "integrations[0].graph.client_secret_env: client_id is set, so its credential is "
            "needed: client_secret_env (or _file), or client_certificate_file",
        ),
        (
            doc(server={"admin_sign_in": {"client_secret_env": "SECRET"}}),
            "server.admin_sign_in.client_id: client_secret is set, so its client_id is needed",
        ),
        (
            doc(personal={"azure_client_secret_env": "SECRET"}),
            "integrations[0].personal.user_oauth_client_id: azure_client_secret is set, so its "
            "user_oauth_client_id is needed",
        ),
        (
            doc(personal={"user_oauth_client_id": "app"}),
            "integrations[0].personal.azure_client_secret_env: user_oauth_client_id is set, so "
            "its azure_client_secret is needed (azure_client_secret_env or "
            "azure_client_secret_file): credentials come in pairs",
        ),
    ],
)
def test_half_a_pair_is_refused_where_nothing_reads_it(
    document: dict[str, Any], expected: str
) -> None:
    assert problems(document) == [expected]


def test_half_a_pair_given_as_a_file_is_refused_too(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("s3cret-s3cret\n")
    document = doc(server={"admin_sign_in": {"client_secret_file": "secret"}})
    with pytest.raises(ConfigError) as info:
        config.parse(document, tmp_path, {})
    assert info.value.problems == [
        "server.admin_sign_in.client_id: client_secret is set, so its client_id is needed"
    ]


def test_a_user_alone_stays_allowed_where_it_is_a_whole_credential() -> None:
    """oauth_delegated's service account signs in in a browser (no password); a public
    client (AD FS's user sign-in, the admin sign-in) has an id and no secret."""
    allowed = [
        doc(exchange={"service_account_username": "svc", "authentication": "oauth_delegated"}),
        doc(personal={"user_oauth_client_id": "app", "authentication_provider": "adfs"}),
    ]
    for document in allowed:
        assert config.parse(document, Path("."), ENV)


def test_whole_pairs_pass_and_a_half_pair_the_backend_needs_is_reported_once() -> None:
    whole = doc(
        pexip={"management_username": "admin", "management_password_env": "SECRET"},
        exchange={"service_account_username": "svc", "service_account_password_env": "SECRET"},
    )
    assert config.parse(whole, Path("."), ENV)
    ews = doc(
        exchange={
            "ews_url": "https://mail.example.com/EWS/Exchange.asmx",
            "service_account_username": "svc",
        }
    )
    ews["integrations"][0]["backend"] = "ews"
    assert problems(ews) == [
        "integrations[0].exchange.service_account_password_env: basic needs the password "
        "(service_account_password_env or _file)"
    ]


def test_a_half_pair_the_mode_needs_is_named_once() -> None:
    """management_api needs both: with one of them written, the missing half is the one
    problem, not also the mode's "needs management_username and management_password"."""
    pexip = {"mode": "management_api", "management_url": "https://pexmgr.example.com"}
    assert problems(doc(pexip={**pexip, "management_username": "admin"})) == [
        "integrations[0].pexip.management_password_env: management_username is set, so its "
        "management_password is needed (management_password_env or management_password_file): "
        "credentials come in pairs"
    ]
    (neither,) = problems(doc(pexip=pexip))
    assert neither.startswith("integrations[0].pexip: mode 'management_api' needs")
