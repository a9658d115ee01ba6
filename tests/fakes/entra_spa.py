"""A stand-in of the Microsoft identity platform (Entra ID, v2.0 endpoints) for one tenant and a
single-page app: the authorization code flow with PKCE that MSAL.js runs, written from
Microsoft's documentation (learn.microsoft.com/entra/identity-platform: "OAuth 2.0 authorization
code flow", "OpenID Connect", "ID tokens", "Access tokens", "Single-page application: App
registration"), served over real TLS (MSAL.js refuses an authority that is not https) with a
certificate minted here.

- `GET /{tenant}/v2.0/.well-known/openid-configuration` and `GET /{tenant}/discovery/v2.0/keys`:
  the tenant's OpenID configuration and signing keys, readable cross-origin (the browser reads
  them with fetch).
- `GET /{tenant}/oauth2/v2.0/authorize`: the user is already signed in and has consented (as with
  a session cookie), so the answer is at once a redirect back to the redirect URI with `code`,
  `client_info` (when asked with `client_info=1`), `state` and `session_state`, in the response
  mode asked (query or fragment). An unknown client or a redirect URI not registered for it get
  an error page, as Entra shows one rather than redirecting; a request without a PKCE challenge
  or with a scope no app of the tenant exposes is answered at the redirect URI with `error`.
- `POST /{tenant}/oauth2/v2.0/token`, grant `authorization_code`: the code is single-use,
  lives 10 minutes, is bound to the client, the redirect URI and the PKCE challenge (S256 or
  plain, RFC 7636 4.6). A code issued to a redirect URI of type "spa" may only be redeemed by a
  cross-origin request (an `Origin` header: AADSTS9002327 otherwise), and only then does the
  answer carry `Access-Control-Allow-Origin` (the request's origin): Microsoft documents that
  the spa type is what enables CORS for the redirect URI, and that without it the browser finds
  no such header. A preflight (MSAL sends `X-AnchorMailbox`) is allowed for any origin, as
  nothing is known of the client then. A secret is never accepted with an `Origin`.
  The answer holds a v2.0 access token for the API the scope names (aud the API's client id, scp
  the scopes, azp the client), an ID token with the request's nonce (aud the client), a refresh
  token (with `offline_access`; a SPA's lives 24 hours, `refresh_token_expires_in`) and, when
  asked with `client_info=1`, `client_info` (base64url JSON of the user's object id and the
  tenant id: MSAL builds the account's home id from it). Tokens are RS256 JWTs signed with the
  tenant's key, named by `kid`.

Errors are Entra's JSON (`error`, `error_description` starting with the AADSTS code,
`error_codes`, `timestamp`, `trace_id`, `correlation_id`)."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import jwt
from aiohttp import web

from tests.fakes.identity_platform import server_context, tls_files
from tests.fakes.identity_provider import SigningKey
from tests.fakes.threaded import ThreadedServer

OIDC_SCOPES = frozenset({"openid", "profile", "email", "offline_access"})
CODE_LIFETIME = 600  # seconds; Entra's authorization codes live about 10 minutes
SPA_REFRESH_LIFETIME = 24 * 3600  # a SPA's refresh tokens live 24 hours


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


@dataclass
class App:
    """An app registration: its SPA redirect URIs, and the API it exposes (Expose an API: the
    application ID URI and its delegated scopes). Access tokens for it are v2.0 tokens
    (`accessTokenAcceptedVersion: 2`), so their audience is its client id."""

    client_id: str
    spa_redirect_uris: tuple[str, ...] = ()
    app_id_uri: str = ""
    scopes: tuple[str, ...] = ("access_as_user",)


@dataclass
class User:
    object_id: str = "7d2f3c1a-5b6e-4f80-9a1b-2c3d4e5f6a70"
    name: str = "Ann Example"
    username: str = "ann@contoso.example"


@dataclass
class Grant:
    """What an authorization code stands for."""

    client_id: str
    redirect_uri: str
    scopes: tuple[str, ...]
    nonce: str
    challenge: str
    method: str
    expires: float


@dataclass
class Issued:
    """An access token the token endpoint handed out: for whom, for which scope."""

    client_id: str
    scope: str
    audience: str
    origin: str


@dataclass
class EntraTenant:
    tenant_id: str = "5e1f0b7c-2d3a-4b6c-8e9f-0a1b2c3d4e5f"
    domain: str = "contoso.example"  # the tenant's name, usable in place of its id in URLs
    apps: dict[str, App] = field(default_factory=dict)
    user: User = field(default_factory=User)
    keys: dict[str, SigningKey] = field(
        default_factory=lambda: {"k1": SigningKey.new("Entra stand-in signing key")}
    )
    token_lifetime: int = 3600
    base: str = ""  # https://127.0.0.1:<port>, set once served
    codes: dict[str, Grant] = field(default_factory=dict)
    redeemed: set[str] = field(default_factory=set)
    # refresh tokens handed out (client id, scopes); no refresh grant is played here
    refresh_tokens: dict[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)
    issued: dict[str, Issued] = field(default_factory=dict)  # access token -> what it is for
    # what was asked: (endpoint, {parameter: value}, Origin header or "")
    requests: list[tuple[str, dict[str, str], str]] = field(default_factory=list)
    # a misbehaving platform, for tests that the client checks: the nonce put in ID tokens
    # instead of the request's when set
    id_token_nonce: str | None = None

    def register(self, app: App) -> App:
        self.apps[app.client_id] = app
        return app

    @property
    def authority(self) -> str:
        return f"{self.base}/{self.tenant_id}"

    @property
    def issuer(self) -> str:
        return f"{self.base}/{self.tenant_id}/v2.0"

    def asked(self, endpoint: str) -> list[dict[str, str]]:
        return [params for name, params, _ in self.requests if name == endpoint]

    # --- HTTP --------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tenant}/v2.0/.well-known/openid-configuration", self._config)
        app.router.add_route("*", "/{tenant}/discovery/v2.0/keys", self._keys)
        app.router.add_get("/{tenant}/oauth2/v2.0/authorize", self._authorize)
        app.router.add_route("*", "/{tenant}/oauth2/v2.0/token", self._token)
        return app

    def _known_tenant(self, request: web.Request) -> bool:
        return request.match_info["tenant"].lower() in (self.tenant_id, self.domain.lower())

    @staticmethod
    def _error(
        status: int,
        error: str,
        code: int,
        message: str,
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        trace, correlation = str(uuid.uuid4()), str(uuid.uuid4())
        return web.json_response(
            {
                "error": error,
                "error_description": f"AADSTS{code}: {message} Trace ID: {trace} "
                f"Correlation ID: {correlation} Timestamp: {now}",
                "error_codes": [code],
                "timestamp": now,
                "trace_id": trace,
                "correlation_id": correlation,
                "error_uri": f"https://login.microsoftonline.com/error?code={code}",
            },
            status=status,
            headers=headers,
        )

    @staticmethod
    def _public_cors() -> dict[str, str]:
        """The discovery documents are public: any origin may read them."""
        return {"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Methods": "GET, OPTIONS"}

    async def _config(self, request: web.Request) -> web.Response:
        cors = self._public_cors()
        if request.method == "OPTIONS":
            return web.Response(status=204, headers=cors)
        if request.method != "GET":
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "OPTIONS"])
        self.requests.append(("openid-configuration", {}, request.headers.get("Origin", "")))
        if not self._known_tenant(request):
            return self._error(400, "invalid_tenant", 90002, "Tenant not found.", headers=cors)
        base = self.authority
        document = {
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": [
                "client_secret_post",
                "private_key_jwt",
                "client_secret_basic",
            ],
            "jwks_uri": f"{base}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": self.issuer,
            "request_uri_parameter_supported": False,
            "userinfo_endpoint": f"{self.base}/oidc/userinfo",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
            "claims_supported": [
                "sub",
                "iss",
                "aud",
                "exp",
                "iat",
                "auth_time",
                "nonce",
                "preferred_username",
                "name",
                "tid",
                "ver",
                "email",
            ],
            "kerberos_endpoint": f"{base}/kerberos",
            "tenant_region_scope": "EU",
            "cloud_instance_name": "microsoftonline.com",
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": "graph.microsoft.com",
            "rbac_url": "https://pas.windows.net",
        }
        return web.json_response(document, headers=cors)

    async def _keys(self, request: web.Request) -> web.Response:
        cors = self._public_cors()
        if request.method == "OPTIONS":
            return web.Response(status=204, headers=cors)
        if request.method != "GET":
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "OPTIONS"])
        self.requests.append(("keys", {}, request.headers.get("Origin", "")))
        if not self._known_tenant(request):
            return self._error(400, "invalid_tenant", 90002, "Tenant not found.", headers=cors)
        keys = []
        for kid, key in self.keys.items():
            jwk = key.jwk(kid)
            jwk.pop("alg", None)  # Entra's keys name no alg
            jwk["x5t"] = key.x5t
            jwk["x5c"] = [base64.b64encode(key.cert_der).decode()]
            jwk["issuer"] = self.issuer
            keys.append(jwk)
        return web.json_response({"keys": keys}, headers=cors)

    # --- authorize -------------------------------------------------------------------------
    def _resolve_scopes(self, scope: str) -> tuple[tuple[str, ...], App | None, str]:
        """The scopes asked, the app whose API they name (one resource per request), or an
        error description."""
        asked = tuple(s for s in scope.split(" ") if s)
        resource: App | None = None
        for item in asked:
            if item in OIDC_SCOPES:
                continue
            uri, _, name = item.rpartition("/")
            owner = next((a for a in self.apps.values() if a.app_id_uri == uri), None)
            if owner is None:
                return asked, None, f"500011:The resource principal named {uri} was not found."
            if name != ".default" and name not in owner.scopes:
                return asked, None, f"65005:The app asked for scope '{name}' that does not exist."
            if resource is not None and resource is not owner:
                return (
                    asked,
                    None,
                    "28000:Provide value for the input parameter scope: one resource.",
                )
            resource = owner
        return asked, resource, ""

    @staticmethod
    def _back(redirect_uri: str, mode: str, answer: dict[str, str]) -> web.Response:
        """The redirect to the app with the answer in the query or the fragment."""
        parts = urlsplit(redirect_uri)
        if mode == "fragment":
            target = urlunsplit(parts._replace(fragment=urlencode(answer)))
        else:
            query = f"{parts.query}&{urlencode(answer)}" if parts.query else urlencode(answer)
            target = urlunsplit(parts._replace(query=query, fragment=""))
        raise web.HTTPFound(target)

    async def _authorize(self, request: web.Request) -> web.Response:
        query = {k: v for k, v in request.query.items()}
        self.requests.append(("authorize", query, request.headers.get("Origin", "")))
        if not self._known_tenant(request):
            return web.Response(status=400, text="AADSTS90002: Tenant not found.")
        app = self.apps.get(query.get("client_id", ""))
        if app is None:
            return web.Response(
                status=400,
                text=f"AADSTS700016: Application with identifier "
                f"'{query.get('client_id', '')}' was not found in the directory.",
            )
        redirect_uri = query.get("redirect_uri", "")
        if redirect_uri not in app.spa_redirect_uris:
            return web.Response(
                status=400,
                text=f"AADSTS50011: The redirect URI '{redirect_uri}' specified in the request "
                f"does not match the redirect URIs configured for the application "
                f"'{app.client_id}'.",
            )
        mode = query.get("response_mode", "query")
        if mode not in ("query", "fragment"):
            mode = "query"  # form_post is not played here
        state = {"state": query["state"]} if "state" in query else {}

        def refuse(error: str, description: str) -> web.Response:
            return self._back(
                redirect_uri, mode, {"error": error, "error_description": description, **state}
            )

        if query.get("response_type") != "code":
            return refuse("unsupported_response_type", "AADSTS700054: response_type is code.")
        challenge = query.get("code_challenge", "")
        method = query.get("code_challenge_method", "plain")
        if not challenge:  # a SPA redirect URI: PKCE is required
            return refuse(
                "invalid_request",
                "AADSTS9002325: Proof Key for Code Exchange is required for cross-origin "
                "authorization code redemption.",
            )
        if method not in ("S256", "plain"):
            return refuse("invalid_request", "AADSTS501491: Invalid code_challenge_method.")
        scopes, _, problem = self._resolve_scopes(query.get("scope", ""))
        if problem:
            number, _, text = problem.partition(":")
            kind = "invalid_resource" if number == "500011" else "invalid_scope"
            return refuse(kind, f"AADSTS{number}: {text}")
        code = secrets.token_urlsafe(48)
        self.codes[code] = Grant(
            client_id=app.client_id,
            redirect_uri=redirect_uri,
            scopes=scopes,
            nonce=query.get("nonce", ""),
            challenge=challenge,
            method=method,
            expires=time.time() + CODE_LIFETIME,
        )
        answer = {"code": code}
        if query.get("client_info") == "1":
            answer["client_info"] = self._client_info()
        answer.update(state)
        answer["session_state"] = str(uuid.uuid4())
        return self._back(redirect_uri, mode, answer)

    # --- token -----------------------------------------------------------------------------
    def _client_info(self) -> str:
        return b64url(json.dumps({"uid": self.user.object_id, "utid": self.tenant_id}).encode())

    @staticmethod
    def _pkce_ok(verifier: str, challenge: str, method: str) -> bool:
        """RFC 7636 4.6: the verifier (43 to 128 unreserved characters) must produce the
        challenge of the authorization request."""
        allowed = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
        if not 43 <= len(verifier) <= 128 or not set(verifier) <= allowed:
            return False
        if method == "plain":
            return secrets.compare_digest(verifier, challenge)
        return secrets.compare_digest(b64url(hashlib.sha256(verifier.encode()).digest()), challenge)

    def _sign(self, claims: dict[str, Any]) -> str:
        kid, key = next(iter(self.keys.items()))
        return jwt.encode(claims, key.pem, algorithm="RS256", headers={"kid": kid, "typ": "JWT"})

    def _tokens(
        self, client: App, scopes: tuple[str, ...], nonce: str, origin: str, client_info: bool
    ) -> dict[str, Any]:
        now = int(time.time())
        _, resource, _ = self._resolve_scopes(" ".join(scopes))
        user = self.user
        body: dict[str, Any] = {"token_type": "Bearer"}
        if resource is not None:
            names = [s.rpartition("/")[2] for s in scopes if s not in OIDC_SCOPES]
            if ".default" in names:
                names = list(resource.scopes)
            scope = " ".join(f"{resource.app_id_uri}/{n}" for n in names)
            access = self._sign(
                {
                    "aud": resource.client_id,
                    "iss": self.issuer,
                    "iat": now,
                    "nbf": now,
                    "exp": now + self.token_lifetime,
                    "aio": b64url(secrets.token_bytes(32)),
                    "azp": client.client_id,
                    "azpacr": "0",  # a public client
                    "name": user.name,
                    "oid": user.object_id,
                    "preferred_username": user.username,
                    "rh": "0.A" + b64url(secrets.token_bytes(24)) + ".",
                    "scp": " ".join(names),
                    "sub": b64url(
                        hashlib.sha256(f"{user.object_id}{resource.client_id}".encode()).digest()
                    ),
                    "tid": self.tenant_id,
                    "uti": b64url(secrets.token_bytes(16)),
                    "ver": "2.0",
                }
            )
            self.issued[access] = Issued(client.client_id, scope, resource.client_id, origin)
            body.update(
                scope=scope,
                expires_in=self.token_lifetime,
                ext_expires_in=self.token_lifetime,
                access_token=access,
            )
        if "offline_access" in scopes:
            refresh = secrets.token_urlsafe(64)
            self.refresh_tokens[refresh] = (client.client_id, scopes)
            body["refresh_token"] = refresh
            body["refresh_token_expires_in"] = SPA_REFRESH_LIFETIME
        if "openid" in scopes:
            claims: dict[str, Any] = {
                "aud": client.client_id,
                "iss": self.issuer,
                "iat": now,
                "nbf": now,
                "exp": now + self.token_lifetime,
                "name": user.name,
                "oid": user.object_id,
                "preferred_username": user.username,
                "rh": "0.A" + b64url(secrets.token_bytes(24)) + ".",
                "sub": b64url(
                    hashlib.sha256(f"{user.object_id}{client.client_id}".encode()).digest()
                ),
                "tid": self.tenant_id,
                "uti": b64url(secrets.token_bytes(16)),
                "ver": "2.0",
            }
            nonce = self.id_token_nonce if self.id_token_nonce is not None else nonce
            if nonce:
                claims["nonce"] = nonce
            body["id_token"] = self._sign(claims)
        if client_info:
            body["client_info"] = self._client_info()
        return body

    async def _token(self, request: web.Request) -> web.Response:
        origin = request.headers.get("Origin", "")
        if request.method == "OPTIONS":
            # a CORS preflight (MSAL sends X-AnchorMailbox): nothing is known yet of the client
            return web.Response(
                status=204,
                headers={
                    "Access-Control-Allow-Origin": origin or "*",
                    "Access-Control-Allow-Methods": "POST, OPTIONS",
                    "Access-Control-Allow-Headers": request.headers.get(
                        "Access-Control-Request-Headers", ""
                    ),
                    "Access-Control-Max-Age": "86400",
                    "Vary": "Origin",
                },
            )
        if request.method != "POST":
            raise web.HTTPMethodNotAllowed(request.method, ["POST", "OPTIONS"])
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.requests.append(("token", form, origin))
        cors: dict[str, str] = {}
        if not self._known_tenant(request):
            return self._error(400, "invalid_request", 90002, "Tenant not found.")
        client = self.apps.get(form.get("client_id", ""))
        if client is None:
            return self._error(
                400, "unauthorized_client", 700016, "Application was not found in the directory."
            )
        if origin and ("client_secret" in form or "client_assertion" in form):
            return self._error(
                400,
                "invalid_request",
                9002326,
                "Client credentials are not accepted in cross-origin requests.",
            )
        grant_type = form.get("grant_type", "")
        if grant_type != "authorization_code":
            return self._error(
                400, "unsupported_grant_type", 70003, f"The app requested {grant_type!r}."
            )
        code = form.get("code", "")
        grant = self.codes.pop(code, None)
        if grant is not None and grant.redirect_uri in client.spa_redirect_uris and origin:
            # the redirect URI is of type spa: its answers are readable cross-origin
            cors = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
        if grant is None:
            if code in self.redeemed:
                return self._error(
                    400, "invalid_grant", 54005, "OAuth2 Authorization code was already redeemed."
                )
            return self._error(
                400, "invalid_grant", 70000, "The provided authorization code is invalid."
            )
        self.redeemed.add(code)
        if grant.expires < time.time():
            return self._error(400, "invalid_grant", 70008, "The code has expired.", cors)
        if grant.client_id != client.client_id:
            return self._error(
                400, "invalid_grant", 70000, "The code was issued to another client.", cors
            )
        if not origin:
            return self._error(
                400,
                "invalid_request",
                9002327,
                "Tokens issued for the 'Single-Page Application' client-type may only be "
                "redeemed via cross-origin requests.",
            )
        if form.get("redirect_uri") != grant.redirect_uri:
            return self._error(
                400,
                "invalid_grant",
                50148,
                "The redirect_uri does not match the one of the authorization request.",
                cors,
            )
        if not self._pkce_ok(form.get("code_verifier", ""), grant.challenge, grant.method):
            return self._error(
                400,
                "invalid_grant",
                501481,
                "The Code_Verifier does not match the code_challenge supplied in the "
                "authorization request.",
                cors,
            )
        body = self._tokens(
            client, grant.scopes, grant.nonce, origin, client_info=form.get("client_info") == "1"
        )
        return web.json_response(body, headers={**cors, "Cache-Control": "no-store"})


@contextmanager
def running(
    directory: Path, tenant: EntraTenant | None = None
) -> Iterator[tuple[EntraTenant, Path]]:
    """The tenant's identity platform over real TLS (its certificate written to `directory`);
    yields the tenant (its `base` set) and the CA file to trust."""
    cert, key = tls_files(directory)
    tenant = tenant or EntraTenant()
    server = ThreadedServer(tenant.app(), ssl_context=server_context(cert, key)).start()
    tenant.base = server.url
    try:
        yield tenant, cert
    finally:
        server.stop()
