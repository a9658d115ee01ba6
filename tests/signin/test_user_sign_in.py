"""The explicit sign-in for personal VMRs against the fake identity platform over real TLS: the
authorization URL (state, nonce, S256 challenge; AD FS's resource), the callback (state checked
once and per integration, the PKCE verifier checked by the provider, the ID token's audience and
nonce), sessions (email only by token digest, refresh tokens encrypted at rest, refreshed once a
day, forgotten when the provider refuses the refresh or the user signs out)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.fakes import identity_platform
from tests.fakes.identity_platform import IdentityPlatform
from vmrsched import config
from vmrsched.errors import Unauthorized
from vmrsched.mailbox.sessions import CaSession
from vmrsched.signin.oidc import expected_issuer
from vmrsched.signin.users import SignInRefused, UserSignIn
from vmrsched.telemetry import STATE_DAMAGED, Alarms, Metrics

REDIRECT = "https://vmr.example.com/addin/room/sign-in/callback"


@dataclass
class World:
    platform: IdentityPlatform
    ca_file: Path
    tmp: Path


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with identity_platform.running(
        tmp_path, "Olga@Example.com", client_id="pane-client", client_secret="pane-secret"
    ) as (platform, ca):
        yield World(platform, ca, tmp_path)


def integration(world: World, name: str = "room", **personal: Any) -> config.IntegrationConfig:
    p = world.platform
    secret = (
        {}
        if personal.get("authentication_provider") == "adfs"
        else {"azure_client_secret_env": "PANE_SECRET"}
    )
    doc = {
        "server": {"data_dir": str(world.tmp / "data")},
        "integrations": [
            {
                "name": name,
                "exchange": {"mailbox_name": "Room", "mailbox_email": f"{name}@example.com"},
                "addin": {"token_validation": "exchange"},
                "metadata": {"exchange_metadata_urls": ["https://mail.example.com/"]},
                "enable_personal_vmrs": True,
                "personal": {
                    "directory_file": str(Path(__file__).parents[2] / "config" / "vmrs.toml"),
                    "user_oauth_authorization_uri": f"{p.authority}/oauth2/v2.0/authorize",
                    "user_oauth_token_uri": f"{p.authority}/oauth2/v2.0/token",
                    "user_oauth_client_id": "pane-client",
                    **secret,
                    "tls_ca_file": str(world.ca_file),
                    **personal,
                },
            }
        ],
    }
    return config.parse(doc, world.tmp, {"PANE_SECRET": "pane-secret"}).integrations[0]


class Clock:
    def __init__(self) -> None:
        self.now = 1_900_000_000.0

    def __call__(self) -> float:
        return self.now


def sign_in_for(world: World, clock: Clock | None = None) -> UserSignIn:
    return UserSignIn(
        world.tmp / "data",
        environ={},
        clock=clock or Clock(),
        http_for=lambda integ: CaSession(integ.personal.tls_ca_file),
    )


def authorize(world: World, url: str) -> dict[str, str]:
    """The user signs in at the provider; the query it redirects back with."""
    response = requests.get(url, allow_redirects=False, verify=str(world.ca_file), timeout=10)
    assert response.status_code == 302, response.text
    location = response.headers["Location"]
    assert location.startswith(REDIRECT + "?")
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))


def test_the_authorization_url_carries_state_nonce_and_an_s256_challenge(world: World) -> None:
    integ = integration(world)
    url = sign_in_for(world).start(integ, REDIRECT)
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    assert url.startswith(integ.personal.user_oauth_authorization_uri + "?")
    assert query["client_id"] == "pane-client" and query["redirect_uri"] == REDIRECT
    assert query["response_type"] == "code" and query["code_challenge_method"] == "S256"
    assert len(query["code_challenge"]) == 43 and len(query["state"]) >= 32
    assert "offline_access" in query["scope"].split() and query["nonce"]
    assert "resource" not in query

    adfs = integration(
        world,
        authentication_provider="adfs",
        adfs_resource_identifier="urn:vmrsched",
    )
    adfs_query = dict(
        urllib.parse.parse_qsl(
            urllib.parse.urlsplit(sign_in_for(world).start(adfs, REDIRECT)).query
        )
    )
    assert adfs_query["resource"] == "urn:vmrsched"


def test_a_sign_in_opens_a_session_naming_the_user(world: World) -> None:
    integ = integration(world)
    sign_in = sign_in_for(world)
    session = sign_in.finish(integ, authorize(world, sign_in.start(integ, REDIRECT)), REDIRECT)
    assert session.email == "olga@example.com" and session.token.startswith("vms1.")
    assert sign_in.email(integ, session.token) == "olga@example.com"
    assert world.platform.grants == ["authorization_code"]

    stored = (world.tmp / "data" / "sign-in" / "room.json").read_text()
    assert session.token not in stored  # only its digest
    refresh = next(iter(world.platform.refresh_tokens))
    assert refresh not in stored  # encrypted at rest
    key = world.tmp / "data" / "sign-in" / "key"
    assert key.stat().st_mode & 0o777 == 0o600


def test_an_id_token_not_signed_by_the_providers_keys_opens_no_session(world: World) -> None:
    """Whoever answers the token endpoint, the ID token must be signed with a key the
    provider publishes: a forged one naming another user gets nobody's session."""
    integ = integration(world)
    sign_in = sign_in_for(world)
    world.platform.forge_with = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(SignInRefused, match="signature does not verify"):
        sign_in.finish(integ, authorize(world, sign_in.start(integ, REDIRECT)), REDIRECT)
    world.platform.forge_with = None
    session = sign_in.finish(integ, authorize(world, sign_in.start(integ, REDIRECT)), REDIRECT)
    assert session.email == "olga@example.com"


@pytest.mark.parametrize(
    ("changed", "why"),
    [
        pytest.param({"nonce": None}, "nonce", id="no nonce"),
        pytest.param({"nonce": "another-attempts-nonce"}, "nonce", id="another nonce"),
        pytest.param({"exp": None}, "expires", id="no expiry"),
        pytest.param({"iss": None}, "issuer", id="no issuer"),
        pytest.param({"iss": "https://login.example/other/v2.0"}, "issuer", id="another issuer"),
        pytest.param({"tid": None}, "issuer", id="no tenant"),
    ],
)
def test_an_id_token_must_name_its_issuer_expiry_and_this_attempts_nonce(
    world: World, changed: dict[str, object], why: str
) -> None:
    """DESIGN: every ID token's signature, issuer, audience, nonce and expiry are verified;
    a claim left out is not a claim that holds (OpenID Connect Core 3.1.3.7)."""
    integ = integration(world)
    sign_in = sign_in_for(world)
    world.platform.claims_changed = changed
    with pytest.raises(SignInRefused, match=why):
        sign_in.finish(integ, authorize(world, sign_in.start(integ, REDIRECT)), REDIRECT)


def test_the_issuer_is_the_configured_tenant_or_the_tokens_own_under_a_domain_name() -> None:
    """Entra ID names the tenant id in `iss` whatever the authorize URL names; AD FS its
    /adfs root. A token of another tenant does not pass for the configured one."""
    guid = "11111111-2222-3333-4444-555555555555"
    entra = f"https://login.microsoftonline.com/{guid}/oauth2/v2.0/authorize"
    mine = {"tid": guid}
    assert expected_issuer(entra, mine) == f"https://login.microsoftonline.com/{guid}/v2.0"
    other = {"tid": "99999999-2222-3333-4444-555555555555"}
    assert expected_issuer(entra, other) == f"https://login.microsoftonline.com/{guid}/v2.0"
    named = "https://login.microsoftonline.com/contoso.com/oauth2/v2.0/authorize"
    assert expected_issuer(named, mine) == f"https://login.microsoftonline.com/{guid}/v2.0"
    adfs = "https://sts.contoso.com/adfs/oauth2/authorize"
    assert expected_issuer(adfs, {}) == "https://sts.contoso.com/adfs"
    assert expected_issuer("https://idp.example/authorize", mine) is None


def test_a_wrong_reused_or_foreign_state_is_refused(world: World) -> None:
    integ = integration(world)
    other = integration(world, name="other")
    sign_in = sign_in_for(world)
    query = authorize(world, sign_in.start(integ, REDIRECT))
    with pytest.raises(SignInRefused, match="unknown or expired"):
        sign_in.finish(integ, {**query, "state": query["state"][:-2] + "xx"}, REDIRECT)
    with pytest.raises(SignInRefused, match="unknown or expired"):
        sign_in.finish(other, query, REDIRECT)  # the attempt was another integration's
    # the state is spent by a refused attempt too: a second try must start again
    with pytest.raises(SignInRefused, match="unknown or expired"):
        sign_in.finish(integ, query, REDIRECT)
    with pytest.raises(SignInRefused, match="refused the sign-in"):
        sign_in.finish(integ, {"error": "access_denied", "state": "s"}, REDIRECT)
    # the provider's words come through the address bar: never on our page
    forged = {"error": "x", "error_description": "Call +1 555 0100 to unlock", "state": "s"}
    with pytest.raises(SignInRefused) as refused:
        sign_in.finish(integ, forged, REDIRECT)
    assert "555" not in refused.value.message


def test_an_attempt_expires_after_ten_minutes(world: World) -> None:
    integ = integration(world)
    clock = Clock()
    sign_in = sign_in_for(world, clock)
    query = authorize(world, sign_in.start(integ, REDIRECT))
    clock.now += 601
    with pytest.raises(SignInRefused, match="unknown or expired"):
        sign_in.finish(integ, query, REDIRECT)


def test_the_provider_checks_the_pkce_verifier(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """A code redeemed with another verifier (an intercepted code) is refused; the page shows
    the provider's OAuth code, the log its words (docs/guarantees.md: our own words only)."""
    integ = integration(world)
    sign_in = sign_in_for(world)
    query = authorize(world, sign_in.start(integ, REDIRECT))
    state = query["state"]
    store = sign_in._attempts.store
    kept = store.take(state)
    assert kept is not None
    store.put(state, dataclasses.replace(kept, verifier="x" * 64))
    with pytest.raises(SignInRefused, match=r"refused the code \(invalid_grant;") as refused:
        sign_in.finish(integ, query, REDIRECT)
    assert "PKCE" not in str(refused.value)
    assert any("PKCE verification failed" in r.getMessage() for r in caplog.records)


def test_sessions_are_refreshed_daily_and_forgotten_when_refused_or_signed_out(
    world: World,
) -> None:
    integ = integration(world)
    clock = Clock()
    sign_in = sign_in_for(world, clock)
    session = sign_in.finish(integ, authorize(world, sign_in.start(integ, REDIRECT)), REDIRECT)

    clock.now += 23 * 3600
    assert not sign_in.needs_refresh(integ, session.token)
    assert sign_in.email(integ, session.token) == "olga@example.com"
    assert world.platform.grants == ["authorization_code"]

    clock.now += 2 * 3600
    assert sign_in.needs_refresh(integ, session.token)
    assert sign_in.email(integ, session.token) == "olga@example.com"
    assert world.platform.grants == ["authorization_code", "refresh_token"]
    assert not sign_in.needs_refresh(integ, session.token)

    clock.now += 25 * 3600
    world.platform.refuse_refresh = True
    with pytest.raises(Unauthorized) as refused:
        sign_in.email(integ, session.token)
    assert refused.value.code == "sign_in_required"
    with pytest.raises(Unauthorized):  # forgotten, not asked again
        sign_in.email(integ, session.token)
    assert world.platform.grants.count("refresh_token") == 2

    world.platform.refuse_refresh = False
    again = sign_in.finish(integ, authorize(world, sign_in.start(integ, REDIRECT)), REDIRECT)
    sign_in.sign_out(integ, again.token)
    with pytest.raises(Unauthorized):
        sign_in.email(integ, again.token)
    assert json.loads((world.tmp / "data" / "sign-in" / "room.json").read_text()) == {}


def test_a_session_key_from_the_environment_is_used_and_a_changed_key_loses_sessions(
    world: World,
) -> None:
    from cryptography.fernet import Fernet

    integ = integration(world)
    clock = Clock()
    key = Fernet.generate_key().decode()
    first = UserSignIn(
        world.tmp / "data",
        environ={"VMRSCHED_SESSION_KEY": key},
        clock=clock,
        http_for=lambda i: CaSession(i.personal.tls_ca_file),
    )
    session = first.finish(integ, authorize(world, first.start(integ, REDIRECT)), REDIRECT)
    assert not (world.tmp / "data" / "sign-in" / "key").exists()

    clock.now += 2 * 24 * 3600
    changed = UserSignIn(
        world.tmp / "data",
        environ={"VMRSCHED_SESSION_KEY": Fernet.generate_key().decode()},
        clock=clock,
        http_for=lambda i: CaSession(i.personal.tls_ca_file),
    )
    with pytest.raises(Unauthorized):
        changed.email(integ, session.token)


# --- damage (DESIGN "Storage": kept aside, alarm, nothing readable lost) ----------------------


def damage_alarms(alarms: Alarms) -> dict[str, str]:
    return {a.integration: a.message for a in alarms.active() if a.name == STATE_DAMAGED}


def test_a_damaged_sign_in_key_is_replaced_kept_aside_and_said_plainly(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """A garbage key file: a new key (sessions made with the old one must sign in again), the
    old file kept, one clear log line, the alarm; never a 500 on every sign-in."""
    alarms = Alarms(Metrics())
    integ = integration(world)
    folder = world.tmp / "data" / "sign-in"
    folder.mkdir(parents=True)
    (folder / "key").write_text("this is not a Fernet key\n")
    sign_in = sign_in_for(world)
    with caplog.at_level(logging.ERROR, "vmrsched"):
        session = sign_in.finish(integ, authorize(world, sign_in.start(integ, REDIRECT)), REDIRECT)
    assert sign_in.email(integ, session.token) == "olga@example.com"
    [aside] = folder.glob("key.damaged-*")
    assert aside.read_text() == "this is not a Fernet key\n"
    Fernet((folder / "key").read_text().strip().encode())  # a usable key now
    [line] = [r.getMessage() for r in caplog.records if "key" in r.getMessage()]
    assert "new key" in line and "sign in again" in line
    assert str(aside) in damage_alarms(alarms)["service"]


def test_a_cut_sessions_file_keeps_every_readable_session(world: World) -> None:
    alarms = Alarms(Metrics())
    integ = integration(world)
    clock = Clock()
    sign_in = sign_in_for(world, clock)
    sessions = [
        sign_in.finish(integ, authorize(world, sign_in.start(integ, REDIRECT)), REDIRECT)
        for _ in range(3)
    ]
    path = world.tmp / "data" / "sign-in" / "room.json"
    original = path.read_bytes()
    path.write_bytes(original[: len(original) - 20])  # the last session (by digest) is cut
    last = max(sessions, key=lambda s: hashlib.sha256(s.token.encode()).hexdigest())

    again = sign_in_for(world, clock)
    for session in sessions:
        if session is last:
            with pytest.raises(Unauthorized):
                again.email(integ, session.token)
        else:
            assert again.email(integ, session.token) == "olga@example.com"
    [aside] = path.parent.glob("room.json.damaged-*")
    assert aside.read_bytes() == original[: len(original) - 20]
    assert len(json.loads(path.read_text())) == 2  # what was readable, written whole again
    assert str(aside) in damage_alarms(alarms)["room"]


def test_an_email_the_token_marks_unverified_names_nobody() -> None:
    """Bookings are their organizer's by address: an `email` claim its issuer did not verify
    (OpenID's email_verified, Entra ID's xms_edov) is not taken for the user's."""
    from vmrsched.signin.claims import email_of

    unverified = {"email": "alice@example.com", "preferred_username": "mallory@example.com"}
    assert email_of({**unverified, "email_verified": False}) == "mallory@example.com"
    assert email_of({**unverified, "xms_edov": False}) == "mallory@example.com"
    assert email_of({"email": "alice@example.com", "xms_edov": False}) == ""
    assert email_of({**unverified, "email_verified": True}) == "alice@example.com"
    assert email_of({"email": " Alice@Example.com "}) == "alice@example.com"


def test_a_refusal_that_is_not_a_json_object_is_still_a_refusal() -> None:
    """A token endpoint answering 400 with a JSON array (or anything not an object) is a
    refusal like any other, not a fault of ours."""
    import json as jsonlib

    import requests

    from vmrsched.signin.oidc import Client, token_request

    class Endpoint(requests.Session):
        def post(self, *_: object, **__: object) -> requests.Response:  # type: ignore[override]
            answer = requests.Response()
            answer.status_code = 400
            answer._content = jsonlib.dumps(["invalid_grant"]).encode()
            return answer

    client = Client("https://idp.example/authorize", "https://idp.example/token", "app")
    with pytest.raises(SignInRefused, match="refused the code"):
        token_request(Endpoint(), client, {"grant_type": "authorization_code"})


# --- whom the sign-in names (audit M1: only the configured tenant; the `email` claim alone) ----

TENANT_ID = "22222222-3333-4444-5555-666666666666"
OTHER_TENANT_ID = "99999999-3333-4444-5555-666666666666"


@pytest.fixture
def by_tenant_id(tmp_path: Path) -> Iterator[World]:
    """The platform under a tenant id (a GUID), as most admins configure the authority."""
    with identity_platform.running(
        tmp_path,
        "Olga@Example.com",
        client_id="pane-client",
        client_secret="pane-secret",
        tenant=TENANT_ID,
    ) as (platform, ca):
        yield World(platform, ca, tmp_path)


def sign_in_with(world: World, integ: config.IntegrationConfig, **claims: object) -> str:
    """Olga signs in and the platform's ID token has `claims` changed: the session's email."""
    world.platform.claims_changed = dict(claims)
    sign_in = sign_in_for(world)
    return sign_in.finish(integ, authorize(world, sign_in.start(integ, REDIRECT)), REDIRECT).email


def test_an_id_token_of_another_tenant_is_refused_even_when_its_issuer_is_ours(
    by_tenant_id: World,
) -> None:
    """Microsoft: always check that the token's `tid` is the tenant the data belongs to. A
    token naming another tenant in `tid` gets nobody's session, whatever `iss` says."""
    integ = integration(by_tenant_id)
    with pytest.raises(SignInRefused, match="another organization") as refused:
        sign_in_with(by_tenant_id, integ, tid=OTHER_TENANT_ID)
    assert OTHER_TENANT_ID in refused.value.detail
    assert sign_in_with(by_tenant_id, integ) == "olga@example.com"


def test_under_a_domain_name_the_tenant_is_the_one_its_openid_configuration_names(
    world: World,
) -> None:
    """The authority may name the tenant by a domain (contoso.example here): its OpenID
    configuration names the tenant's id, and a token of another tenant, consistent in itself
    (its `iss` its own `tid`'s), is still refused."""
    integ = integration(world)
    other = f"{world.platform.base}/fabrikam.example/v2.0"
    with pytest.raises(SignInRefused, match="another organization"):
        sign_in_with(world, integ, tid="fabrikam.example", iss=other)
    assert sign_in_with(world, integ) == "olga@example.com"


def test_an_email_the_token_marks_unverified_refuses_the_sign_in_in_plain_words(
    world: World,
) -> None:
    """`xms_edov` false: the email's domain is not verified by its owner, so anyone could have
    typed it; the sign-in is refused (not taken as `preferred_username` instead), and the
    error's log-only detail names the address."""
    integ = integration(world)
    for unverified in ({"xms_edov": False}, {"xms_edov": "false"}, {"email_verified": False}):
        with pytest.raises(SignInRefused, match="not verified") as refused:
            sign_in_with(world, integ, **unverified)
        assert "olga@example.com" in refused.value.detail.lower()
    assert sign_in_with(world, integ, xms_edov=True) == "olga@example.com"


def test_without_the_email_claim_nobody_is_signed_in_and_the_refusal_says_what_to_configure(
    world: World,
) -> None:
    """`preferred_username` is mutable and Microsoft says it cannot be used for authorization:
    it never stands in for the email. The refusal says what the admin must configure."""
    integ = integration(world)
    with pytest.raises(SignInRefused) as refused:
        sign_in_with(world, integ, email=None, preferred_username="bob@example.com")
    assert "optional claim" in refused.value.message and '"email"' in refused.value.message


def test_ad_fs_still_names_the_user_by_upn(world: World) -> None:
    """AD FS is the organization's own token service (no tenants, no `xms_edov`): its `upn`
    still names the user when no `email` claim is issued."""
    integ = integration(
        world, authentication_provider="adfs", adfs_resource_identifier="urn:vmrsched"
    )
    world.platform.public_clients = {"pane-client"}
    claims = {"email": None, "preferred_username": None, "upn": "Olga@Example.com"}
    assert sign_in_with(world, integ, **claims) == "olga@example.com"


# --- sign-ins in progress (audit L2: a flood of starts cannot grow memory) ----------------------


def test_attempts_in_progress_are_bounded_the_oldest_dropped_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past MAX_PENDING attempts the oldest goes: memory stays bounded, and a flood of starts
    does not turn away the next real user (who then comes back within seconds) for ten
    minutes."""
    from vmrsched.signin import oidc

    monkeypatch.setattr(oidc, "MAX_PENDING", 5)
    clock = Clock()
    attempts = oidc.MemoryAttempts(clock)
    for n in range(8):
        clock.now += 1
        attempts.put(f"state-{n}", oidc.Attempt("room", "v", "n", clock.now))
    assert attempts.take("state-2") is None  # among the three oldest, dropped
    kept = attempts.take("state-7")
    assert kept is not None and kept.context == "room"
    assert len(attempts._pending) == 4


def test_an_email_claim_that_is_not_one_address_names_nobody(world: World) -> None:
    """The re-check signed in as "bob@contoso.test\\r\\nFAKE LOG LINE": a session is keyed by
    an organizer's address, so a claim with line breaks, spaces, a display name or a second
    "@" is refused; an address is taken trimmed and in lower case."""
    integ = integration(world)
    for odd in (
        "olga@example.com\r\nFAKE LOG LINE",
        "Olga <olga@example.com>",
        "olga @example.com",
        "olga@example.com@evil.example",
    ):
        with pytest.raises(SignInRefused, match="not one email address"):
            sign_in_with(world, integ, email=odd)
    assert sign_in_with(world, integ, email=" Olga@Example.COM ") == "olga@example.com"
