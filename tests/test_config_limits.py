"""Values that parse but cannot work are refused with their key path: a poll interval that
would spin a core, an alias prefix no dialler takes unescaped, script sources and a public URL
over plain http, a CA bundle that is not there."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from vmrsched import config
from vmrsched.config import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def doc(server: dict[str, Any] | None = None, **tables: Any) -> dict[str, Any]:
    integ: dict[str, Any] = {
        "name": "alpha",
        "exchange": {"mailbox_name": "VMR", "mailbox_email": "vmr@example.com"},
        "addin": {"token_validation": "none"},
        "single_use": {"alias_prefix": "81"},
    }
    for table, keys in tables.items():
        integ[table] = {**integ.get(table, {}), **keys} if isinstance(keys, dict) else keys
    return {"server": {"listen": "127.0.0.1:8080", **(server or {})}, "integrations": [integ]}


def problems(document: dict[str, Any], base: Path = Path(".")) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config.parse(document, base, {})
    return info.value.problems


def ews_oauth(token_endpoint: str) -> dict[str, Any]:
    """One EWS integration signing in with an app's OAuth secret at `token_endpoint`."""
    ews = doc(
        exchange={
            "mailbox_name": "VMR",
            "mailbox_email": "vmr@example.com",
            "ews_url": "https://mail.example.com/EWS/Exchange.asmx",
            "authentication": "oauth_app",
            "oauth_client_id": "app",
            "oauth_client_secret_env": "EWS_SECRET",
            "oauth_token_endpoint": token_endpoint,
        }
    )
    ews["integrations"][0]["backend"] = "ews"
    return ews


@pytest.mark.parametrize("table", ["spool", "exchange", "graph"])
@pytest.mark.parametrize("interval", [0, -1, 0.001])
def test_a_poll_interval_that_would_spin_a_core_is_refused(table: str, interval: float) -> None:
    found = problems(doc(**{table: {"poll_interval_seconds": interval}}))
    assert found == [
        f"integrations[0].{table}.poll_interval_seconds: must be 0.01-3600.0, got "
        f"{float(interval)!r}"
    ]


def test_poll_intervals_from_the_floor_to_an_hour_are_taken() -> None:
    cfg = config.parse(
        doc(spool={"poll_interval_seconds": 0.01}, exchange={"poll_interval_seconds": 3600}),
        Path("."),
        {},
    )
    assert cfg.integrations[0].spool.poll_interval_seconds == 0.01
    assert cfg.integrations[0].exchange.poll_interval_seconds == 3600.0


def test_the_full_example_documents_the_poll_interval_range() -> None:
    text = (ROOT / "config" / "examples" / "full.toml").read_text()
    lines = [line for line in text.splitlines() if line.startswith("poll_interval_seconds")]
    assert lines and all("# 0.01-3600" in line for line in lines)


@pytest.mark.parametrize("prefix", ["a@b", "8 1", "é", "vmr:", "a;b", "<v>", "x\t"])
def test_an_alias_prefix_a_dialler_cannot_take_unescaped_is_refused(prefix: str) -> None:
    assert problems(doc(single_use={"alias_prefix": prefix})) == [
        "integrations[0].single_use.alias_prefix: must be ASCII letters, digits, '.', '_' or '-' "
        "only (aliases are dialled as SIP/H.323 user parts: prefix + digits + @ + domain), got "
        f"{prefix!r}"
    ]


def test_letters_digits_dots_underscores_and_hyphens_make_a_prefix() -> None:
    for prefix in ("81", "vmr", "Meet.", "a_b-c"):
        cfg = config.parse(doc(single_use={"alias_prefix": prefix}), Path("."), {})
        assert cfg.integrations[0].single_use.alias_prefix == prefix


def test_additional_script_sources_must_be_https() -> None:
    advanced = {
        "use_custom_addin_sources": True,
        "office_js_url": "https://assets.example.org/office.js",
        "additional_script_sources": [
            "https://scripts.example.org/a.js",
            "http://cdn.example.org/b.js",
        ],
    }
    assert problems(doc(advanced=advanced)) == [
        "integrations[0].advanced.additional_script_sources[1]: must be an https URL (scripts "
        "come from their own https host), got 'http://cdn.example.org/b.js'"
    ]
    advanced["additional_script_sources"] = ["https://scripts.example.org/a.js"]
    assert config.parse(doc(advanced=advanced), Path("."), {})


@pytest.mark.parametrize("table", ["exchange", "pexip", "graph", "personal"])
def test_a_ca_bundle_that_is_not_there_is_reported_whatever_uses_it(
    table: str, tmp_path: Path
) -> None:
    """Named on a spool integration in policy mode with personal VMRs off: nothing reads it
    today, and the day something does every call fails on TLS."""
    found = problems(doc(**{table: {"tls_ca_file": "internal-ca.pem"}}), base=tmp_path)
    assert found == [
        f"integrations[0].{table}.tls_ca_file: no such file: {tmp_path / 'internal-ca.pem'}"
    ]
    (tmp_path / "internal-ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    assert config.parse(doc(**{table: {"tls_ca_file": "internal-ca.pem"}}), tmp_path, {})


def test_the_admin_sign_ins_ca_bundle_is_checked_with_the_sign_in_off(tmp_path: Path) -> None:
    found = problems(doc(server={"admin_sign_in": {"tls_ca_file": "ca.pem"}}), base=tmp_path)
    assert found == [f"server.admin_sign_in.tls_ca_file: no such file: {tmp_path / 'ca.pem'}"]


def verified(public_url: str) -> dict[str, Any]:
    """A server behind `public_url` whose add-in verifies tokens (unverified ones are for
    loopback only, whatever public_url says)."""
    return doc(
        server={"public_url": public_url},
        addin={"token_validation": "exchange", "server_fqdn": "vmr.example.com"},
        metadata={"exchange_metadata_urls": ["mail.example.com"]},
    )


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://vmr.example.com/", "must be an https URL with a host"),
        ("vmr.example.com", "must be an https URL with a host"),
        ("https://", "must be an https URL with a host"),
        ("http://vmr.example.com", "must be https (http only to a loopback address"),
        ("http://10.0.0.5:8080", "must be https (http only to a loopback address"),
    ],
)
def test_public_url_is_the_public_https_url(url: str, why: str) -> None:
    (found,) = problems(verified(url))
    assert found.startswith(f"server.public_url: {why}") and repr(url) in found


@pytest.mark.parametrize(
    "url",
    [
        "https://vmr.example.com",
        "https://vmr.example.com:8443/",
        "http://127.0.0.1:8080",
        "http://localhost:8080",
    ],
)
def test_https_and_loopback_http_public_urls_are_taken(url: str) -> None:
    assert config.parse(verified(url), Path("."), {}).server.public_url == url


def test_identity_providers_are_reached_over_https_only() -> None:
    """DESIGN: identity providers over https only, loopback aside: the Graph app's authority
    and the EWS OAuth token endpoint carry client secrets and tokens."""
    graph = doc(
        backend="graph",
        graph={
            "tenant_id": "11111111-2222-3333-4444-555555555555",
            "client_id": "app",
            "client_secret_env": "GRAPH_SECRET",
            "authority": "http://login.evil.example",
        },
    )
    graph["integrations"][0]["backend"] = "graph"
    found = problems(graph)
    assert any(p.startswith("integrations[0].graph.authority: must be https") for p in found)
    ews = ews_oauth("http://192.0.2.2/token")
    found = problems(ews)
    assert any(
        p.startswith("integrations[0].exchange.oauth_token_endpoint: must be an https URL")
        for p in found
    )


@pytest.mark.parametrize(
    ("endpoint", "refused"),
    [
        ("https://localhost:47201/token", True),
        ("https://login.example.com/oauth2/v2.0/token", True),  # no tenant
        ("https://login.example.com//oauth2/v2.0/token", True),  # an empty tenant
        ("https://adfs.contoso.com/adfs/oauth2/token#x", True),
        ("https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token", False),
        ("https://adfs.contoso.com/adfs/oauth2/token", False),
    ],
)
def test_a_token_endpoint_the_service_cannot_sign_in_with_is_refused(
    endpoint: str, refused: bool
) -> None:
    """msal signs in through the token endpoint's authority (its parent): an endpoint of
    another form passed check-config and then failed every sign-in at run time."""
    ews = ews_oauth(endpoint)
    found = [p for p in problems(ews) if "oauth_token_endpoint" in p]
    if refused:
        assert found == [
            f"integrations[0].exchange.oauth_token_endpoint: must be "
            f"https://<host>/<tenant>/oauth2/v2.0/token (Entra ID) or "
            f"https://<host>/adfs/oauth2/token (AD FS), got {endpoint!r}"
        ]
    else:
        assert not found


def test_a_provider_name_the_manifest_schema_refuses_is_refused() -> None:
    """The manifest's ProviderName is a ShortString (125 characters): longer would make the
    served manifest fail the schema."""
    assert problems(doc(addin={"token_validation": "none", "provider_name": "p" * 126})) == [
        "integrations[0].addin.provider_name: must be at most 125 characters, got 126"
    ]
    cfg = config.parse(
        doc(addin={"token_validation": "none", "provider_name": "p" * 125}), Path("."), {}
    )
    assert cfg.integrations[0].addin.provider_name == "p" * 125
    assert problems(
        doc(addin={"token_validation": "none", "send_check_button_label": "b" * 21})
    ) == ["integrations[0].addin.send_check_button_label: must be at most 20 characters, got 21"]


def test_the_default_notification_texts_fit_outlooks_150_characters() -> None:
    """On iOS and Android these go to the notification bar, which takes 150 characters."""
    addin = config.AddinConfig()
    for key in (
        "success_message",
        "already_assigned_message",
        "unavailable_message",
        "error_inserting_single_use_message",
        "meeting_ends_before_start_message",
        "meeting_in_past_message",
        "error_signing_in_message",
        "error_too_many_requests_message",
        "error_quota_exceeded_message",
    ):
        assert len(getattr(addin, key).replace("{seconds}", "3600")) <= 150, key
