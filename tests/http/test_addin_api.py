"""The add-in API against a running service: token verification of both kinds (every failure
gets 401; valid tokens get 201), limits (413, 429), origins, feature switches and 503, and the
manifest against Microsoft's XSDs."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from lxml import etree

from tests import spoolkit
from tests.fakes.identity_provider import IdentityProvider, SigningKey
from tests.shared import MO11, SCHEMAS, needs_schemas, schema_valid_part
from vmrsched import config, service
from vmrsched.http.app import create_app
from vmrsched.http.manifest import addin_id

PUBLIC = "https://localhost:8443"  # loopback: the test config has token_validation none
PANE = f"{PUBLIC}/addin/onprem/taskpane.html"
API = "/api/addin/v1/{}/single-use-vmrs"


def make_config(tmp_path: Path, idp: IdentityProvider, **server: Any) -> config.Config:
    def integ(name: str, mailbox: str, addin: dict[str, Any], **extra: Any) -> dict[str, Any]:
        out = {
            "name": name,
            "exchange": {"mailbox_name": f"Room {name}", "mailbox_email": mailbox},
            "addin": {"server_fqdn": "vmr.example.com", **addin},
            "metadata": {"exchange_metadata_urls": [f"{idp.base}/autodiscover/metadata/json/1"]},
            "single_use": {"alias_prefix": name[:8]},  # aliases are unique across the service
        }
        out.update(extra)
        return out

    doc = {
        "server": {
            "listen": "127.0.0.1:0",
            "data_dir": str(tmp_path / "data"),
            "public_url": PUBLIC,
            **server,
        },
        "integrations": [
            integ("onprem", "a@example.com", {"token_validation": "exchange"}),
            integ(
                "online",
                "b@example.com",
                {
                    "token_validation": "entra",
                    "entra_tenant_id": idp.tenant,
                    "entra_client_id": "app-client-id",
                    "entra_authority": idp.base,
                },
            ),
            integ("open", "c@example.com", {"token_validation": "none"}),
            integ(
                "personal-only",
                "d@example.com",
                {"token_validation": "none"},
                enable_single_use_vmrs=False,
                enable_personal_vmrs=True,
                personal={
                    "user_oauth_authorization_uri": "https://login/a",
                    "user_oauth_token_uri": "https://login/t",
                    "user_oauth_client_id": "c",
                    "authentication_provider": "adfs",
                    "adfs_resource_identifier": "urn:x",
                    "directory_file": str(Path(__file__).parents[2] / "config" / "vmrs.toml"),
                },
            ),
        ],
    }
    return config.parse(doc, tmp_path, {})


@pytest.fixture
def running_service(tmp_path: Path, idp: IdentityProvider) -> Iterator[service.Service]:
    svc = service.start(make_config(tmp_path, idp, rate_limit_per_minute=5))
    spoolkit.wait_for(
        lambda: (
            all(s.get("state") == "running" for s in svc.ctx.status.snapshot().values())
            and len(svc.ctx.status.snapshot()) == 4
        )
    )
    yield svc
    svc.stop()


@pytest.fixture
async def client(running_service: service.Service) -> AsyncIterator[TestClient[Any, Any]]:
    test_client = TestClient(TestServer(create_app(running_service)))
    await test_client.start_server()
    yield test_client
    await test_client.close()


async def post(
    client: TestClient[Any, Any], integration: str, token: str | None = None, **kw: Any
) -> tuple[int, dict[str, Any]]:
    headers = kw.pop("headers", {})
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    response = await client.post(API.format(integration), headers=headers, **kw)
    return response.status, await response.json()


# --- Exchange identity tokens ----------------------------------------------------------------


async def test_valid_exchange_identity_token_gets_201(
    client: TestClient[Any, Any], idp: IdentityProvider
) -> None:
    status, body = await post(client, "onprem", idp.exchange_token(PANE), json={"subject": "x"})
    assert status == 201, body
    assert set(body) == {
        "alias",
        "numeric_alias",
        "alias_id",
        "joining_instructions",
        "room_name",
        "room_email",
    }
    assert body["alias_id"] in body["joining_instructions"]
    assert body["room_email"] == "a@example.com"


@pytest.mark.parametrize(
    "case",
    [
        "bad_signature",
        "wrong_audience",
        "expired",
        "not_yet_valid",
        "unknown_x5t",
        "alg_none",
        "missing",
        "garbage",
        "hs256",
    ],
)
async def test_exchange_token_failures_get_401(
    client: TestClient[Any, Any], idp: IdentityProvider, case: str
) -> None:
    other = SigningKey.new()
    tokens: dict[str, Callable[[], str | None]] = {
        "bad_signature": lambda: idp.exchange_token(PANE, key=other, x5t=idp.exchange_keys[0].x5t),
        "wrong_audience": lambda: idp.exchange_token("https://elsewhere.example/pane.html"),
        "expired": lambda: idp.exchange_token(PANE, lifetime=-3600, not_before=-7200),
        "not_yet_valid": lambda: idp.exchange_token(PANE, not_before=3600, lifetime=7200),
        "unknown_x5t": lambda: idp.exchange_token(PANE, key=other),
        "alg_none": lambda: idp.exchange_token(PANE, alg="none"),
        "missing": lambda: None,
        "garbage": lambda: "not.a.token",
        "hs256": lambda: __import__("jwt").encode(
            {"aud": PANE}, "s" * 32, algorithm="HS256", headers={"x5t": idp.exchange_keys[0].x5t}
        ),
    }
    status, body = await post(client, "onprem", tokens[case]())
    assert status == 401, body
    assert set(body["error"]) == {"code", "message"}


async def test_unknown_x5t_refreshes_metadata_once(
    client: TestClient[Any, Any], idp: IdentityProvider
) -> None:
    assert (await post(client, "onprem", idp.exchange_token(PANE)))[0] == 201
    fetched = len(idp.requests)
    rolled = SigningKey.new()
    idp.exchange_keys.append(rolled)  # key rollover on the Exchange side
    assert (await post(client, "onprem", idp.exchange_token(PANE, key=rolled)))[0] == 201
    assert len(idp.requests) == fetched + 1
    # a flood of unknown keys does not hammer the metadata host
    for _ in range(3):
        assert (await post(client, "onprem", idp.exchange_token(PANE, key=SigningKey.new())))[
            0
        ] in (401, 429)
    assert len(idp.requests) == fetched + 1


async def test_amurl_on_an_unconfigured_host_is_refused_without_a_request(
    client: TestClient[Any, Any], idp: IdentityProvider
) -> None:
    listener = IdentityProvider()
    server = TestServer(listener.app())
    await server.start_server()
    try:
        amurl = str(server.make_url("/autodiscover/metadata/json/1"))
        token = idp.exchange_token(PANE, amurl=amurl)
        status, body = await post(client, "onprem", token)
        assert status == 401 and body["error"]["code"] == "untrusted_issuer"
        assert listener.requests == []
    finally:
        await server.close()


async def test_a_401_says_how_to_authenticate(client: TestClient[Any, Any]) -> None:
    """RFC 9110 §15.5.2 and RFC 6750 §3: a Bearer challenge, with error="invalid_token" only
    when a token was given."""
    missing = await client.post(API.format("onprem"))
    assert missing.status == 401
    assert missing.headers["WWW-Authenticate"] == 'Bearer realm="vmrsched"'
    bad = await client.post(API.format("onprem"), headers={"Authorization": "Bearer x.y.z"})
    assert bad.status == 401
    assert bad.headers["WWW-Authenticate"] == 'Bearer realm="vmrsched", error="invalid_token"'


@pytest.mark.parametrize("integration", ["onprem", "online"])
async def test_keys_that_cannot_be_fetched_are_503_so_the_pane_inserts_its_placeholder(
    client: TestClient[Any, Any], idp: IdentityProvider, integration: str
) -> None:
    """An outage of the identity provider (or of Exchange's metadata) says nothing against the
    caller's token: 503 metadata_unavailable, on which the pane falls back to its placeholder
    and the meeting is still booked; a 401 would tell the user to sign in again."""
    idp.down = True
    token = (
        idp.exchange_token(PANE) if integration == "onprem" else idp.entra_token("app-client-id")
    )
    status, body = await post(client, integration, token)
    assert status == 503 and body["error"]["code"] == "metadata_unavailable", body
    idp.down = False
    assert (await post(client, integration, token))[0] == 201


# --- Entra ID tokens -------------------------------------------------------------------------


async def test_valid_entra_token_gets_201(
    client: TestClient[Any, Any], idp: IdentityProvider
) -> None:
    status, body = await post(client, "online", idp.entra_token("app-client-id"))
    assert status == 201, body
    status, _ = await post(client, "online", idp.entra_token("api://vmr.example.com/app-client-id"))
    assert status == 201


async def test_an_entra_token_must_grant_the_panes_scope(
    client: TestClient[Any, Any], idp: IdentityProvider
) -> None:
    """Microsoft: an API validates `scp`. An ID token of the same app (its audience the client
    id) or an app-only token names no delegated scope; neither is the user's grant to the pane."""
    for scp in (None, "Mail.Read", "access_as_user_not"):
        status, body = await post(client, "online", idp.entra_token("app-client-id", scp=scp))
        assert status == 401 and body["error"]["code"] == "invalid_scope", scp
    token = idp.entra_token("app-client-id", scp="openid access_as_user profile")
    assert (await post(client, "online", token))[0] == 201


@pytest.mark.parametrize(
    "case",
    ["wrong_audience", "other_tenant", "wrong_issuer", "expired", "unknown_kid", "bad_signature"],
)
async def test_entra_token_failures_get_401(
    client: TestClient[Any, Any], idp: IdentityProvider, case: str
) -> None:
    other = SigningKey.new()
    token = {
        "wrong_audience": lambda: idp.entra_token("someone-else"),
        "other_tenant": lambda: idp.entra_token(
            "app-client-id", tenant="99999999-2222-3333-4444-555555555555"
        ),
        "wrong_issuer": lambda: idp.entra_token(
            "app-client-id", issuer="https://evil.example/v2.0"
        ),
        "expired": lambda: idp.entra_token("app-client-id", lifetime=-3600),
        "unknown_kid": lambda: idp.entra_token("app-client-id", kid="nope", key=other),
        "bad_signature": lambda: idp.entra_token("app-client-id", key=other),
    }[case]()
    status, body = await post(client, "online", token)
    assert status == 401, body


# --- limits, switches and errors -------------------------------------------------------------


async def test_rate_limit_per_user(client: TestClient[Any, Any], idp: IdentityProvider) -> None:
    statuses = [
        (await post(client, "onprem", idp.exchange_token(PANE, uid="busy")))[0] for _ in range(7)
    ]
    assert statuses[:5] == [201] * 5 and statuses[5:] == [429, 429]
    response = await client.post(
        API.format("onprem"),
        headers={"Authorization": f"Bearer {idp.exchange_token(PANE, uid='busy')}"},
    )
    assert response.status == 429 and int(response.headers["Retry-After"]) >= 1
    # another user is not affected
    assert (await post(client, "onprem", idp.exchange_token(PANE, uid="calm")))[0] == 201


async def test_body_over_64_kib_is_413(client: TestClient[Any, Any]) -> None:
    status, body = await post(
        client,
        "open",
        data=b"{" + b" " * 70000 + b"}",
        headers={"Content-Type": "application/json"},
    )
    assert status == 413 and body["error"]["code"] == "payload_too_large"


async def test_bad_json_is_400_and_unknown_integration_404(client: TestClient[Any, Any]) -> None:
    status, body = await post(
        client, "open", data=b"{nope", headers={"Content-Type": "application/json"}
    )
    assert status == 400 and body["error"]["code"] == "bad_request"
    status, body = await post(client, "open", json={"start": "2030-01-01T10:00"})
    assert status == 400 and "time zone" in body["error"]["message"]
    status, body = await post(client, "nobody")
    assert status == 404 and body["error"]["code"] == "unknown_integration"


async def test_feature_off_is_403(client: TestClient[Any, Any]) -> None:
    status, body = await post(client, "personal-only")
    assert status == 403 and body["error"]["code"] == "feature_disabled"
    # refused before the body is read: a bad body changes nothing
    status, body = await post(
        client, "personal-only", data=b"{nope", headers={"Content-Type": "application/json"}
    )
    assert status == 403 and body["error"]["code"] == "feature_disabled"


async def test_the_answer_is_compact_json_in_the_documented_order(
    client: TestClient[Any, Any],
) -> None:
    """The service's Reservation goes out as the API always answered, byte for byte: compact
    JSON, the fields in openapi.yaml's order."""
    response = await client.post(API.format("open"), json={"subject": "Order"})
    assert response.status == 201
    assert response.content_type == "application/json"
    raw = await response.read()
    body = json.loads(raw)
    assert list(body) == [
        "alias",
        "numeric_alias",
        "alias_id",
        "joining_instructions",
        "room_name",
        "room_email",
    ]
    assert raw == json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    assert re.fullmatch(r"PXPS:-[0-9a-f-]{36}#", body["alias_id"])
    assert (body["room_name"], body["room_email"]) == ("Room open", "c@example.com")


async def test_a_foreign_origin_is_misdirected_and_our_own_names_are_not(
    client: TestClient[Any, Any],
) -> None:
    """DESIGN: 421 host_not_allowed for a Host or an Origin the config does not name. Our own
    pages may come under the public URL, the Host the request names, or another name the
    config gives the server (a loopback name on a loopback server) on the same port."""
    port = client.port
    for origin in ("https://evil.example", f"http://evil.example:{port}", "null"):
        status, body = await post(client, "open", headers={"Origin": origin})
        assert status == 421 and body["error"]["code"] == "host_not_allowed", origin
    assert (await post(client, "open", headers={"Origin": "http://localhost:1"}))[0] == 421
    for origin in (PUBLIC, f"http://127.0.0.1:{port}", f"http://localhost:{port}"):
        assert (await post(client, "open", headers={"Origin": origin}))[0] == 201, origin


async def test_a_commit_refused_for_a_lost_lease_is_503_so_the_pane_inserts_its_placeholder(
    client: TestClient[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An instance that resumes after its lease ran out (a paused machine) has its commits
    refused: the reservation is not there, which the add-in hears as 503, not as a 500."""
    from vmrsched.actors.bridge import ReservationBatcher
    from vmrsched.store import OwnershipLostError

    async def refused(*_: Any, **__: Any) -> Any:
        raise OwnershipLostError("another instance owns the integration now")

    monkeypatch.setattr(ReservationBatcher, "reserve", refused)
    status, body = await post(client, "open")
    assert status == 503 and body["error"]["code"] == "unavailable"


async def test_integration_not_running_is_503(
    client: TestClient[Any, Any], running_service: service.Service
) -> None:
    running_service.ctx.status.set("open", state="failed")
    status, body = await post(client, "open")
    assert status == 503 and body["error"]["code"] == "unavailable"


async def test_pane_has_a_strict_csp_that_allows_office_js(client: TestClient[Any, Any]) -> None:
    response = await client.get("/addin/open/taskpane.html")
    assert response.status == 200
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self' https://appsforoffice.microsoft.com" in csp
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert "'unsafe-inline'" not in directives["script-src"] + directives["style-src"]
    assert directives["style-src-attr"] == "'unsafe-inline'"  # style attributes only
    assert "object-src 'none'" in csp
    html = await response.text()
    assert "<script>" not in html  # no inline scripts
    assert 'src="https://appsforoffice.microsoft.com/lib/1/hosted/office.js"' in html


async def test_pane_texts_are_escaped(tmp_path: Path, idp: IdentityProvider) -> None:
    cfg = make_config(tmp_path, idp)
    doc_integ = cfg.integrations[2]
    from dataclasses import replace

    evil = replace(
        doc_integ, addin=replace(doc_integ.addin, pane_title="</title><script>alert(1)</script>")
    )
    svc = service.start(replace(cfg, integrations=(evil,)))
    try:
        async with TestClient(TestServer(create_app(svc))) as test_client:
            html = await (await test_client.get("/addin/open/taskpane.html")).text()
        assert "<script>alert(1)</script>" not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    finally:
        svc.stop()


# --- manifest --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifest_schema() -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(SCHEMAS / "OfficeAppManifestV1_1.xsd")))


async def test_manifest_declares_the_send_check_shared_calendars_and_the_mobile_button(
    client: TestClient[Any, Any],
) -> None:
    """The 1.1 overrides as Microsoft's manifest reference lays them out: Runtimes before the
    form factors; in DesktopFormFactor SupportsSharedFolders, then FunctionFile, then the
    extension points; a LaunchEvent for OnAppointmentSend in PromptUser mode (the Smart Alert
    offers "Send anyway"); MobileFormFactor after DesktopFormFactor with one MobileButton on the
    online-meeting surface. The function names are the ones commands.js associates."""
    response = await client.get("/addin/onprem/manifest.xml")
    document = etree.fromstring(await response.read())
    ns = {"m": MO11, "bt": "http://schemas.microsoft.com/office/officeappbasictypes/1.0"}
    xsi_type = "{http://www.w3.org/2001/XMLSchema-instance}type"
    host = document.find(".//m:Hosts/m:Host", ns)
    assert host is not None
    assert [etree.QName(c).localname for c in host] == [
        "Runtimes",
        "DesktopFormFactor",
        "MobileFormFactor",
    ]
    desktop = host.find("m:DesktopFormFactor", ns)
    assert desktop is not None
    assert [etree.QName(c).localname for c in desktop][:2] == [
        "SupportsSharedFolders",
        "FunctionFile",
    ]
    assert desktop.findtext("m:SupportsSharedFolders", namespaces=ns) == "true"
    points = {p.get(xsi_type): p for p in desktop.findall("m:ExtensionPoint", ns)}
    assert set(points) == {
        "mailappor11:AppointmentOrganizerCommandSurface",
        "mailappor11:LaunchEvent",
    }
    event = points["mailappor11:LaunchEvent"].find("m:LaunchEvents/m:LaunchEvent", ns)
    assert event is not None
    assert event.attrib == {
        "Type": "OnAppointmentSend",
        "FunctionName": "onAppointmentSend",
        "SendMode": "PromptUser",
    }
    mobile = host.find("m:MobileFormFactor/m:ExtensionPoint", ns)
    assert mobile is not None
    assert mobile.get(xsi_type) == "mailappor11:MobileOnlineMeetingCommandSurface"
    control = mobile.find("m:Control", ns)
    assert control is not None and control.get(xsi_type) == "mailappor11:MobileButton"
    images = control.findall("m:Icon/bt:Image", ns)
    assert {(i.get("size"), i.get("scale")) for i in images} == {
        (size, scale) for size in ("25", "32", "48") for scale in ("1", "2", "3")
    }
    assert control.findtext("m:Action/m:FunctionName", namespaces=ns) == "addSingleUseRoom"
    urls = {
        u.get("id"): u.get("DefaultValue") for u in document.iterfind(".//m:Resources//bt:Url", ns)
    }
    assert urls["commandsUrl"] == f"{PUBLIC}/addin/onprem/commands.html"
    assert urls["commandsJsUrl"] == f"{PUBLIC}/addin/onprem/commands.js"
    runtime = host.find("m:Runtimes/m:Runtime", ns)
    assert runtime is not None and runtime.get("resid") == "commandsUrl"
    override = runtime.find("m:Override", ns)
    assert override is not None and override.attrib == {
        "type": "javascript",
        "resid": "commandsJsUrl",
    }
    commands_js = await (await client.get("/addin/static/commands.js")).text()
    for name in ("onAppointmentSend", "addSingleUseRoom"):
        assert f'associate("{name}"' in commands_js
    # the JavaScript-only runtime loads the integration's script alone: its settings come first
    alone = await client.get("/addin/onprem/commands.js")
    assert alone.status == 200 and alone.content_type == "text/javascript"
    first, _, rest = (await alone.text()).partition("\n")
    assert first.startswith("globalThis.vmrschedSettings = {") and rest == commands_js
    assert (await client.get("/addin/nope/commands.js")).status == 404
    page = await client.get("/addin/onprem/commands.html")
    assert page.status == 200
    assert "commands.js" in await page.text()


@needs_schemas
async def test_manifest_validates_against_the_xsd(
    client: TestClient[Any, Any], manifest_schema: etree.XMLSchema
) -> None:
    for name in ("onprem", "online", "open"):
        response = await client.get(f"/addin/{name}/manifest.xml")
        assert response.status == 200
        document = etree.fromstring(await response.read())
        assert manifest_schema.validate(schema_valid_part(document)), manifest_schema.error_log
        ns = {"o": "http://schemas.microsoft.com/office/appforoffice/1.1"}
        assert document.findtext("o:Id", namespaces=ns) is not None
        source = document.find("o:FormSettings/o:Form/o:DesktopSettings/o:SourceLocation", ns)
        assert source is not None
        assert source.get("DefaultValue") == f"{PUBLIC}/addin/{name}/taskpane.html"


async def test_manifest_id_is_stable_and_per_integration(
    client: TestClient[Any, Any], running_service: service.Service
) -> None:
    first = await (await client.get("/addin/onprem/manifest.xml")).read()
    second = await (await client.get("/addin/onprem/manifest.xml")).read()
    assert first == second
    ids = {addin_id(i, "localhost:8443") for i in running_service.config.integrations}
    assert len(ids) == 4
    assert addin_id(running_service.config.integrations[0], "localhost:8443").encode() in first


async def test_manifest_cli(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "vmrsched",
            "manifest",
            "default",
            "--config",
            str(root / "config" / "vmrsched.toml"),
        ],
        capture_output=True,
        cwd=root,
        check=True,
    )
    document = etree.fromstring(out.stdout)  # well-formed, with or without ../shared
    assert document.find("{*}DisplayName") is not None
    if SCHEMAS.is_dir():
        schema = etree.XMLSchema(etree.parse(str(SCHEMAS / "OfficeAppManifestV1_1.xsd")))
        assert schema.validate(schema_valid_part(document)), schema.error_log


async def test_static_files_are_a_whitelist(client: TestClient[Any, Any]) -> None:
    for path, kind in (
        ("/addin/static/pane.js", "text/javascript"),
        ("/addin/static/pane.css", "text/css"),
        ("/addin/static/vendor/msal-browser.min.js", "text/javascript"),
    ):
        response = await client.get(path)
        assert response.status == 200, path
        assert response.content_type == kind
    for path in (
        "/addin/static/vendor/package.json",
        "/addin/static/../../config.py",
        "/addin/static/vendor/node_modules/@azure/msal-browser/package.json",
    ):
        assert (await client.get(path)).status == 404, path


async def test_concurrent_reservations_are_distinct_and_durable(
    tmp_path: Path, idp: IdentityProvider
) -> None:
    import asyncio

    from vmrsched.store import Store

    svc = service.start(make_config(tmp_path, idp, rate_limit_per_minute=1000))
    try:
        await asyncio.to_thread(
            spoolkit.wait_for, lambda: svc.ctx.status.state("open") == "running"
        )
        async with TestClient(TestServer(create_app(svc))) as test_client:
            results = await asyncio.gather(*(post(test_client, "open") for _ in range(50)))
    finally:
        svc.stop()  # closes the store: everything acknowledged must be on disk
    assert all(status == 201 for status, _ in results), results[:3]
    aliases = [body["alias"] for _, body in results]
    assert len(set(aliases)) == 50
    store = Store(tmp_path / "data" / "store" / "open")
    on_disk = {record["alias"] for record in store.records()}
    store.close()
    assert set(aliases) <= on_disk
