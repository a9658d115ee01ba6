from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from vmrsched import config
from vmrsched.config import ConfigError
from vmrsched.logs import redact

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).parent.parent


def minimal(**integration: Any) -> dict[str, Any]:
    integ: dict[str, Any] = {
        "name": "alpha",
        "exchange": {"mailbox_name": "VMR", "mailbox_email": "vmr@example.com"},
        "addin": {"token_validation": "none"},
    }
    integ.update(integration)
    return {"server": {"listen": "127.0.0.1:8080"}, "integrations": [integ]}


def problems(
    doc: dict[str, Any], environ: dict[str, str] | None = None, base: Path = DATA
) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config.parse(doc, base, environ or {})
    return info.value.problems


def test_shipped_default_config_is_valid_and_warns_about_none() -> None:
    cfg = config.load(ROOT / "config" / "vmrsched.toml", environ={})
    assert cfg.integrations[0].backend == "spool"
    assert any("token_validation" in w for w in cfg.warnings)


def test_shipped_full_example_is_valid() -> None:
    env = {"VMRSCHED_EWS_PASSWORD": "pw", "VMRSCHED_ADMIN_TOKEN": "t" * 32}
    cfg = config.load(ROOT / "config" / "examples" / "full.toml", environ=env)
    assert len(cfg.integrations) == 2


def test_defaults_match_the_reference() -> None:
    cfg = config.parse(minimal(), DATA, {})
    su = cfg.integrations[0].single_use
    assert su.alias_suffix_length == 6
    assert (su.join_before_minutes, su.join_after_minutes) == (30, 60)
    assert su.other_participants == "disallow_all"
    assert cfg.integrations[0].reservation_ttl_days == 30
    assert cfg.integrations[0].timezone == "UTC"


def test_alias_prefix_too_long_names_its_key_path() -> None:
    doc = minimal(single_use={"alias_prefix": "ABCDEFGHI"})
    assert problems(doc) == [
        "integrations[0].single_use.alias_prefix: must be 1-8 characters, got 'ABCDEFGHI'"
    ]


def test_a_bad_file_yields_all_its_errors_not_the_first() -> None:
    doc = minimal(
        name="Bad Name!",
        timezone="Mars/Olympus",
        single_use={
            "alias_prefix": "",
            "alias_suffix_length": 5,
            "join_before_minutes": 181,
            "join_after_minutes": -1,
        },
        addin={"token_validation": "none", "description": "x" * 251, "bogus": 1},
        email={"reject_invalid_alias_id_text": "{{ alias }}"},
    )
    found = problems(doc)
    expected_paths = [
        "integrations[0].name:",
        "integrations[0].timezone:",
        "integrations[0].single_use.alias_prefix:",
        "integrations[0].single_use.alias_suffix_length:",
        "integrations[0].single_use.join_before_minutes:",
        "integrations[0].single_use.join_after_minutes:",
        "integrations[0].addin.description:",
        "integrations[0].addin.bogus: unknown key",
        "integrations[0].email.reject_invalid_alias_id_text:",
    ]
    for prefix in expected_paths:
        assert any(p.startswith(prefix) for p in found), (prefix, found)
    assert len(found) == len(expected_paths)


def test_names_must_be_unique_and_mailboxes_used_once() -> None:
    doc = minimal()
    second = dict(doc["integrations"][0])
    doc["integrations"].append(second)
    found = problems(doc)
    assert any(p.startswith("integrations[1].name: 'alpha' is already used") for p in found)
    assert any(p.startswith("integrations[1].exchange.mailbox_email:") for p in found)


def test_mailbox_comparison_ignores_case() -> None:
    doc = minimal()
    other = {
        "name": "beta",
        "exchange": {"mailbox_name": "x", "mailbox_email": "VMR@example.com"},
        "addin": {"token_validation": "none"},
    }
    doc["integrations"].append(other)
    assert any("mailbox_email" in p for p in problems(doc))


def test_at_least_one_vmr_kind() -> None:
    doc = minimal(enable_single_use_vmrs=False, enable_personal_vmrs=False)
    assert any("enable at least one" in p for p in problems(doc))


def test_single_use_needs_exchange_settings() -> None:
    doc = minimal(exchange={}, backend="ews")
    found = problems(doc)
    assert any(p.startswith("integrations[0].exchange.mailbox_email:") for p in found)
    assert any(p.startswith("integrations[0].exchange.ews_url:") for p in found)
    assert any(p.startswith("integrations[0].exchange.service_account_username:") for p in found)
    assert any(
        p.startswith("integrations[0].exchange.service_account_password_env:") for p in found
    )


def test_personal_sign_in_settings_come_all_together_and_the_directory_must_exist() -> None:
    """The verified token's email is enough to know the user: the explicit sign-in settings
    are optional, but all or none of them."""
    shipped = str(Path(__file__).resolve().parent.parent / "config" / "vmrs.toml")
    ok = minimal(enable_personal_vmrs=True, personal={"directory_file": shipped})
    assert config.parse(ok, DATA, {}).integrations[0].enable_personal_vmrs
    partial = minimal(
        enable_personal_vmrs=True,
        personal={"directory_file": shipped, "user_oauth_client_id": "c"},
    )
    found = problems(partial)
    for key in ("user_oauth_authorization_uri", "user_oauth_token_uri", "azure_client_secret_env"):
        assert any(p.startswith(f"integrations[0].personal.{key}:") for p in found), key
    adfs = minimal(
        enable_personal_vmrs=True,
        personal={
            "directory_file": shipped,
            "authentication_provider": "adfs",
            "user_oauth_client_id": "c",
            "user_oauth_authorization_uri": "https://adfs/a",
            "user_oauth_token_uri": "https://adfs/t",
        },
    )
    assert any("adfs_resource_identifier" in p for p in problems(adfs))
    missing = problems(minimal(enable_personal_vmrs=True, personal={"directory_file": "nope.toml"}))
    assert any(
        p.startswith("integrations[0].personal.directory_file: no such file") for p in missing
    )
    pexip = problems(minimal(enable_personal_vmrs=True, personal={"source": "pexip"}))
    assert any(p.startswith("integrations[0].personal.source: 'pexip'") for p in pexip)


def test_literal_secret_is_an_error_and_env_secret_is_read() -> None:
    doc = minimal(
        backend="ews",
        exchange={
            "mailbox_name": "VMR",
            "mailbox_email": "vmr@example.com",
            "ews_url": "https://mail.example.com/EWS/Exchange.asmx",
            "service_account_username": "svc",
            "service_account_password": "hunter2",
        },
    )
    found = problems(doc)
    assert any("secrets may not be written in the file" in p for p in found)
    assert not any("hunter2" in p for p in found)
    doc["integrations"][0]["exchange"].pop("service_account_password")
    doc["integrations"][0]["exchange"]["service_account_password_env"] = "PW"
    cfg = config.parse(doc, DATA, {"PW": "hunter2"})
    secret = cfg.integrations[0].exchange.service_account_password
    assert secret is not None and secret.reveal() == "hunter2"
    assert "hunter2" not in repr(cfg)


def test_missing_secret_env_and_file_are_reported(tmp_path: Path) -> None:
    doc = minimal(
        backend="ews",
        exchange={
            "mailbox_name": "VMR",
            "mailbox_email": "vmr@example.com",
            "ews_url": "https://mail.example.com/EWS/Exchange.asmx",
            "service_account_username": "svc",
            "service_account_password_env": "NOPE",
        },
    )
    assert any("environment variable NOPE is not set" in p for p in problems(doc))
    doc["integrations"][0]["exchange"].pop("service_account_password_env")
    doc["integrations"][0]["exchange"]["service_account_password_file"] = "missing.txt"
    assert any("cannot read" in p for p in problems(doc, base=tmp_path))
    (tmp_path / "pw.txt").write_text("s3cret\n")
    doc["integrations"][0]["exchange"]["service_account_password_file"] = "pw.txt"
    cfg = config.parse(doc, tmp_path, {})
    assert cfg.integrations[0].exchange.service_account_password.reveal() == "s3cret"  # type: ignore[union-attr]


def test_icon_must_be_an_80x80_png(tmp_path: Path) -> None:
    assert config.parse(
        minimal(addin={"token_validation": "none", "icon": "icon-80.png"}), DATA, {}
    )
    found = problems(minimal(addin={"token_validation": "none", "icon": "icon-64.png"}))
    assert found == ["integrations[0].addin.icon: must be 80x80 pixels, got 64x64"]
    (tmp_path / "fake.png").write_bytes(b"GIF89a....")
    found = problems(minimal(addin={"token_validation": "none", "icon": "fake.png"}), base=tmp_path)
    assert found == ["integrations[0].addin.icon: is not a PNG file"]


def test_templates_must_compile_and_joining_needs_alias_uuid() -> None:
    doc = minimal(
        email={
            "single_use_joining_instructions_template": "Call {{alias}}",
            "accept_new_single_meeting_template": "{% if %}",
        }
    )
    found = problems(doc)
    assert any("must contain {{alias_uuid}}" in p for p in found)
    assert any(
        p.startswith("integrations[0].email.accept_new_single_meeting_template: does not compile")
        for p in found
    )


def test_type_errors_are_reported() -> None:
    doc = minimal(enable_single_use_vmrs="yes", single_use={"alias_suffix_length": True})
    found = problems(doc)
    assert "integrations[0].enable_single_use_vmrs: must be true or false, got str" in found
    assert any("alias_suffix_length: must be an integer" in p for p in found)


def test_none_validation_and_demo_refused_off_loopback() -> None:
    doc = minimal()
    doc["server"] = {"listen": "0.0.0.0:8080", "demo": True}
    found = problems(doc)
    assert any(p.startswith("server.demo:") for p in found)
    assert any(p.startswith("integrations[0].addin.token_validation:") for p in found)


def test_exchange_validation_needs_metadata_hosts_and_entra_needs_tenant() -> None:
    found = problems(minimal(addin={"token_validation": "exchange"}))
    assert any("exchange_metadata_urls" in p for p in found)
    found = problems(minimal(addin={"token_validation": "entra"}))
    assert any("entra_tenant_id" in p for p in found)


def test_oauth_delegated_redirect_path() -> None:
    doc = minimal(
        backend="ews",
        exchange={
            "mailbox_name": "VMR",
            "mailbox_email": "vmr@example.com",
            "ews_url": "https://mail.example.com/EWS/Exchange.asmx",
            "authentication": "oauth_delegated",
            "service_account_username": "svc",
            "oauth_client_id": "c",
            "oauth_token_endpoint": "https://login/t",
            "oauth_authorization_endpoint": "https://login/a",
            "oauth_redirect_uri": "https://vmr.example.com/wrong/",
        },
    )
    assert any(
        "must end with /admin/platform/msexchangeconnector/oauth_redirect/" in p
        for p in problems(doc)
    )


def test_not_toml_and_no_integrations(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\nlisten=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(bad)
    assert problems({"server": {}}) == ["integrations: define at least one [[integrations]] table"]


def test_check_config_command_exit_codes(tmp_path: Path) -> None:
    good = subprocess.run(
        [sys.executable, "-m", "vmrsched", "check-config", str(ROOT / "config" / "vmrsched.toml")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert good.returncode == 0 and "OK" in good.stdout and "warning:" in good.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[[integrations]]\nname = "X"\n[integrations.single_use]\nalias_prefix = "ABCDEFGHI"\n'
    )
    shutil.copy(DATA / "icon-80.png", tmp_path)
    out = subprocess.run(
        [sys.executable, "-m", "vmrsched", "check-config", str(bad)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 1
    assert (
        "integrations[0].single_use.alias_prefix: must be 1-8 characters, got 'ABCDEFGHI'"
        in out.stderr
    )
    assert "integrations[0].name:" in out.stderr


def test_full_example_documents_every_key() -> None:
    import dataclasses

    text = (ROOT / "config" / "examples" / "full.toml").read_text()
    for cls in (
        config.ServerConfig,
        config.StorageConfig,
        config.AdminSignInConfig,
        config.IntegrationConfig,
        config.ExchangeConfig,
        config.SpoolConfig,
        config.GraphConfig,
        config.SingleUseConfig,
        config.PersonalConfig,
        config.PexipConfig,
        config.AddinConfig,
        config.EmailConfig,
        config.AdvancedConfig,
        config.MetadataConfig,
    ):
        for f in dataclasses.fields(cls):
            assert f"{f.name}" in text, f"{cls.__name__}.{f.name} missing from full.toml"


def test_the_storage_backend_and_its_connection_string() -> None:
    assert config.parse(minimal()).storage.backend == "file"
    shared = config.parse(
        {**minimal(), "storage": {"backend": "postgresql", "dsn_env": "DSN"}},
        environ={"DSN": "host=db.example.com dbname=vmrsched password=s3cret"},
    )
    assert shared.storage.backend == "postgresql" and shared.storage.dsn is not None
    assert "s3cret" not in repr(shared.storage)
    with pytest.raises(config.ConfigError) as refused:
        config.parse(
            {
                **minimal(),
                "storage": {
                    "backend": "postgresql",
                    "dsn": "host=db password=s3cret",
                    "lease_seconds": 1,
                },
            }
        )
    assert [p.split(":")[0] for p in refused.value.problems] == [
        "storage.dsn",
        "storage.lease_seconds",
        "storage.dsn_env",
    ]


def test_newcomer_mistakes_are_named() -> None:
    doc = minimal(
        addin={"token_validation": "none", "server_fqdn": "https://vc.example.com/addin"},
        single_use={"alias_domain": "video example.com"},
        exchange={"mailbox_name": "VMR", "mailbox_email": "vmr.example.com"},
    )
    found = "\n".join(problems(doc))
    assert "integrations[0].addin.server_fqdn: must be a host name" in found
    assert "integrations[0].single_use.alias_domain: must be a domain name" in found
    assert "integrations[0].exchange.mailbox_email: 'vmr.example.com' is not an email address" in (
        found
    )


def test_warnings_for_plain_http_ews_and_a_prefix_phones_cannot_dial() -> None:
    doc = minimal(
        backend="ews",
        single_use={"alias_prefix": "vmr"},
        exchange={
            "mailbox_name": "VMR",
            "mailbox_email": "vmr@example.com",
            "ews_url": "http://mail.example.com/EWS/Exchange.asmx",
            "service_account_username": "svc",
            "service_account_password_env": "PW",
        },
    )
    warnings = "\n".join(config.parse(doc, DATA, {"PW": "x"}).warnings)
    assert "exchange.ews_url: plain http" in warnings
    assert "single_use.alias_prefix: 'vmr' is not numeric" in warnings
    numeric = config.parse(minimal(single_use={"alias_prefix": "81"}), DATA, {})
    assert not any("alias_prefix" in w for w in numeric.warnings)


def test_pexip_section_is_checked_with_key_paths() -> None:
    doc = minimal(
        pexip={"webapp_fqdn": "https://join.example.com/webapp", "mode": "management_api"}
    )
    found = "\n".join(problems(doc))
    assert "integrations[0].pexip.webapp_fqdn: must be a host name" in found
    assert "integrations[0].pexip.management_url: mode 'management_api' needs" in found
    bad_mode = "\n".join(problems(minimal(pexip={"mode": "provision"})))
    assert "integrations[0].pexip.mode" in bad_mode
    ok = config.parse(minimal(pexip={"webapp_fqdn": "join.example.com:8443"}), DATA, {})
    assert ok.integrations[0].pexip.webapp_fqdn == "join.example.com:8443"


def test_graph_needs_exactly_one_credential_and_a_usable_certificate(tmp_path: Path) -> None:
    graph = {"tenant_id": "contoso.example", "client_id": "app"}
    neither = "\n".join(problems(minimal(backend="graph", graph=graph)))
    assert (
        "integrations[0].graph.client_secret_env: the graph backend needs one credential" in neither
    )
    bad = tmp_path / "key-only.pem"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nMII\n-----END PRIVATE KEY-----\n")
    doc = minimal(backend="graph", graph={**graph, "client_certificate_file": str(bad)})
    assert "must hold the private key and the certificate" in "\n".join(problems(doc))
    both = minimal(
        backend="graph",
        graph={**graph, "client_secret_env": "S", "client_certificate_file": str(bad)},
    )
    assert "needs one credential" in "\n".join(problems(both, {"S": "x"}))
    ok = config.parse(
        minimal(backend="graph", graph={**graph, "client_secret_env": "S"}), DATA, {"S": "x"}
    )
    assert ok.integrations[0].graph.client_id == "app"


# --- alias ranges of two integrations ---------------------------------------------------------


def two(first: dict[str, Any], second: dict[str, Any], **more: Any) -> dict[str, Any]:
    """Two integrations (three with `third`), each with its own mailbox."""
    doc = minimal(single_use=first)
    extra = [("beta", second)] + ([("gamma", more["third"])] if "third" in more else [])
    for index, (name, single_use) in enumerate(extra, 1):
        doc["integrations"].append(
            {
                "name": name,
                "exchange": {"mailbox_name": "VMR", "mailbox_email": f"vmr{index}@example.com"},
                "addin": {"token_validation": "none"},
                "single_use": single_use,
            }
        )
    return doc


def test_two_integrations_on_the_default_range_are_refused_naming_both() -> None:
    found = problems(two({}, {}))
    assert len(found) == 1
    assert found[0].startswith("integrations[1].single_use: ")
    assert "integrations[0].single_use" in found[0]
    assert "'vmr000000'" in found[0] and "vmr000000@video.example.com" in found[0]


def test_numeric_ranges_that_meet_are_refused_even_on_other_domains() -> None:
    doc = two(
        {"alias_prefix": "81", "alias_suffix_length": 7, "alias_domain": "a.example.com"},
        {"alias_prefix": "811", "alias_suffix_length": 6, "alias_domain": "b.example.com"},
    )
    [found] = problems(doc)
    assert found.startswith("integrations[1].single_use: ")
    assert "integrations[0].single_use" in found and "'811000000'" in found
    assert "alias_prefix '81'" in found and "alias_prefix '811'" in found


def test_overlaps_are_reported_with_every_other_problem_at_once() -> None:
    doc = two(
        {"alias_prefix": "81", "alias_suffix_length": 7},
        {"alias_prefix": "811", "alias_suffix_length": 6, "join_before_minutes": 999},
        third={"alias_prefix": "81", "alias_suffix_length": 7},
    )
    found = "\n".join(problems(doc))
    assert "integrations[1].single_use.join_before_minutes: must be 0-180" in found
    assert "integrations[1].single_use: " in found and "integrations[2].single_use: " in found


def test_disjoint_ranges_and_switched_off_single_use_are_accepted() -> None:
    for first, second in [
        ({"alias_prefix": "81", "alias_suffix_length": 7}, {"alias_prefix": "82"}),
        ({"alias_prefix": "81", "alias_suffix_length": 7}, {"alias_prefix": "81"}),
        ({}, {"alias_prefix": "mtg"}),
    ]:
        assert len(config.parse(two(first, second), DATA, {}).integrations) == 2
    personal_only = two({}, {})
    personal_only["integrations"][1].update(
        enable_single_use_vmrs=False,
        enable_personal_vmrs=True,
        personal={"directory_file": str(ROOT / "config" / "vmrs.toml")},
    )
    assert len(config.parse(personal_only, DATA, {}).integrations) == 2


def test_an_invalid_prefix_is_reported_once_not_again_as_an_overlap() -> None:
    found = problems(two({}, {"alias_prefix": "ABCDEFGHI"}))
    assert found == [
        "integrations[1].single_use.alias_prefix: must be 1-8 characters, got 'ABCDEFGHI'"
    ]


def test_check_config_refuses_overlapping_ranges(tmp_path: Path) -> None:
    path = tmp_path / "two.toml"
    path.write_text(
        '[server]\nlisten = "127.0.0.1:0"\n'
        '[[integrations]]\nname = "a"\n[integrations.exchange]\nmailbox_name = "A"\n'
        'mailbox_email = "a@example.com"\n[integrations.addin]\ntoken_validation = "none"\n'
        '[[integrations]]\nname = "b"\n[integrations.exchange]\nmailbox_name = "B"\n'
        'mailbox_email = "b@example.com"\n[integrations.addin]\ntoken_validation = "none"\n'
    )
    out = subprocess.run(
        [sys.executable, "-m", "vmrsched", "check-config", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 1
    assert "integrations[1].single_use: " in out.stderr
    assert "integrations[0].single_use" in out.stderr


# --- reservation quota ------------------------------------------------------------------------


def test_open_reservations_per_user_default_to_a_cap_and_zero_means_none() -> None:
    assert config.parse(minimal(), DATA, {}).integrations[0].single_use == config.SingleUseConfig()
    assert config.SingleUseConfig().max_open_reservations_per_user == 50
    uncapped = minimal(single_use={"max_open_reservations_per_user": 0})
    assert (
        config.parse(uncapped, DATA, {}).integrations[0].single_use.max_open_reservations_per_user
        == 0
    )
    assert problems(minimal(single_use={"max_open_reservations_per_user": -1})) == [
        "integrations[0].single_use.max_open_reservations_per_user: must be 0-100000, got -1"
    ]


def test_a_relative_file_means_one_thing_relative_to_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """check-config and the service read the same CA file, wherever the service is started
    (the shipped systemd unit starts it in /)."""
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "ca.pem").write_text("not checked here")
    (etc / "vmrs.toml").write_text("")
    (etc / "vmrsched.toml").write_text(
        f"""
[server]
data_dir = "{tmp_path / "data"}"
[[integrations]]
name = "hq"
enable_personal_vmrs = true
[integrations.exchange]
mailbox_name = "Video Room"
mailbox_email = "vmr@example.com"
tls_ca_file = "ca.pem"
[integrations.addin]
token_validation = "none"
[integrations.personal]
tls_ca_file = "ca.pem"
"""
    )
    monkeypatch.chdir(tmp_path)  # not the config's directory
    cfg = config.load(Path("etc/vmrsched.toml"), environ={})
    integ = cfg.integrations[0]
    for named in (integ.exchange.tls_ca_file, integ.personal.tls_ca_file):
        assert Path(named).is_absolute() and Path(named) == etc / "ca.pem"
    assert Path(integ.personal.directory_file) == etc / "vmrs.toml"


def test_policy_credentials_come_as_a_pair_and_are_required_off_loopback() -> None:
    alone = minimal()
    alone["server"]["policy_username"] = "pexip-node"
    assert problems(alone) == [
        "server.policy_password: policy_username needs a password (policy_password_env or "
        "policy_password_file)"
    ]
    # as a refused reload logs it ("key — what"), nothing in it is taken for a credential by
    # the log's redaction ("password: set" was)
    key, _, what = problems(alone)[0].partition(": ")
    assert redact(f"{key} — {what}") == f"{key} — {what}"
    short = minimal()
    short["server"].update(policy_username="pexip-node", policy_password_env="PW")
    assert [p.split(":")[0] for p in problems(short, {"PW": "pexip"})] == ["server.policy_password"]
    orphan = minimal()
    orphan["server"]["policy_password_env"] = "PW"
    assert problems(orphan, {"PW": "a-long-enough-password"}) == [
        "server.policy_username: a policy password needs its username"
    ]
    exposed = minimal(
        addin={"token_validation": "exchange"},
        metadata={"exchange_metadata_urls": ["https://mail.example.com/"]},
    )
    exposed["server"]["listen"] = "0.0.0.0:8080"
    assert any(
        p.startswith("server.policy_username: listening on 0.0.0.0:8080") for p in problems(exposed)
    )
    exposed["server"].update(policy_username="pexip-node", policy_password_env="PW")
    config.parse(exposed, DATA, {"PW": "a-long-enough-password"})


def test_two_integrations_cannot_share_a_spool(tmp_path: Path) -> None:
    doc = minimal(spool={"directory": str(tmp_path / "shared")})
    second = {
        "name": "beta",
        "exchange": {"mailbox_name": "VMR 2", "mailbox_email": "vmr2@example.com"},
        "addin": {"token_validation": "none"},
        "single_use": {"alias_prefix": "beta"},
        "spool": {"directory": str(tmp_path / "shared")},
    }
    doc["integrations"].append(second)
    found = [p for p in problems(doc) if "spool" in p]
    assert found == [
        f"integrations[1].spool.directory: {tmp_path / 'shared'} is already the spool of "
        "integrations[0] (alpha); give each integration its own"
    ]


def test_identity_providers_and_key_hosts_are_reached_over_https_only() -> None:
    """A stand-in token endpoint answering over plain http could name any user: the sign-in's
    ID token is trusted on the strength of the token endpoint's TLS (loopback aside)."""
    doc = minimal(
        enable_personal_vmrs=True,
        personal={
            "user_oauth_authorization_uri": "http://idp.example.com/authorize",
            "user_oauth_token_uri": "http://127.0.0.1:9/token",
            "user_oauth_client_id": "pane",
            "azure_client_secret_env": "S",
            "directory_file": str(ROOT / "config" / "vmrs.toml"),
        },
        addin={"token_validation": "exchange"},
        metadata={
            "exchange_metadata_urls": ["http://mail.example.com/", "https://mail2.example.com/"]
        },
    )
    assert sorted(p.split(":")[0] for p in problems(doc, {"S": "secret"})) == [
        "integrations[0].metadata.exchange_metadata_urls[0]",
        "integrations[0].personal.user_oauth_authorization_uri",
    ]


def test_a_misspelt_key_is_named_with_the_key_it_may_mean() -> None:
    doc = minimal(exchange={"mailbox_name": "VMR", "mailbox_emial": "vmr@example.com"})
    doc["server"]["max_conections"] = 10
    found = problems(doc)
    assert "server.max_conections: unknown key (did you mean 'max_connections'?)" in found
    assert (
        "integrations[0].exchange.mailbox_emial: unknown key (did you mean 'mailbox_email'?)"
        in found
    )
    assert problems({**minimal(), "sever": {}})[0] == "sever: unknown key (did you mean 'server'?)"
    assert problems({**minimal(), "logging": {}})[0] == "logging: unknown key"


@pytest.mark.parametrize(
    "tenant", ["common", "organizations", "consumers", "9188040d-6c67-4c5b-b112-36a304b66dad"]
)
def test_the_user_sign_in_must_name_one_tenant(tenant: str) -> None:
    """Bookings are their organizer's by email, and an email is only as good as the tenant
    that vouches for it: a multi-tenant authority would let any organization's users sign in."""

    def signing_in_at(name: str) -> dict[str, Any]:
        return minimal(
            enable_personal_vmrs=True,
            personal={
                "user_oauth_authorization_uri": f"https://login.microsoftonline.com/{name}"
                "/oauth2/v2.0/authorize",
                "user_oauth_token_uri": f"https://login.microsoftonline.com/{name}"
                "/oauth2/v2.0/token",
                "user_oauth_client_id": "pane",
                "azure_client_secret_env": "S",
                "directory_file": str(ROOT / "config" / "vmrs.toml"),
            },
        )

    found = problems(signing_in_at(tenant), {"S": "secret"})
    assert sorted(p.split(":")[0] for p in found) == [
        "integrations[0].personal.user_oauth_authorization_uri",
        "integrations[0].personal.user_oauth_token_uri",
    ]
    assert all("one tenant" in p and tenant in p for p in found)
    config.parse(signing_in_at("contoso.onmicrosoft.com"), DATA, {"S": "secret"})
    config.parse(signing_in_at("11111111-2222-3333-4444-555555555555"), DATA, {"S": "secret"})


def test_an_integration_takes_its_public_url_from_the_server_and_from_nowhere_else() -> None:
    """What is written from one integration's config alone (a decline's {{self_service_url}})
    needs the server's public_url: the loader copies it in, and no table may set it."""
    doc = minimal()
    doc["server"]["public_url"] = "http://127.0.0.1:8080/"
    assert config.parse(doc, DATA, {}).integrations[0].public_url == "http://127.0.0.1:8080"
    assert problems(minimal(public_url="https://elsewhere.example")) == [
        "integrations[0].public_url: unknown key"
    ]
