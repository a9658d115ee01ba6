"""A fake Microsoft identity platform (OAuth 2.0 / OIDC) for the EWS service account: OIDC
discovery, an authorize endpoint that signs the (test) admin in at once, and a token endpoint
for the client_credentials, authorization_code and refresh_token grants. Served over real TLS
(msal insists on https) with a certificate minted here. Access tokens it issues are what the
fake Exchange accepts as Bearer tokens. An outage on demand (`unavailable`): every endpoint
answers 5xx (Retry-After when set), as the platform does when it cannot serve."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import json
import secrets
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jwt
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tests.fakes.threaded import ThreadedServer


def tls_files(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (the certificate is its own CA)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


GROUPS_IN_JWT = 200  # Entra's overage limit for a JWT


@dataclass
class IdentityPlatform:
    client_id: str = "ews-client"
    client_secret: str = "app-secret"
    tenant: str = "contoso.example"
    user: str = "svc-vmr@contoso.example"
    token_lifetime: int = 3600
    base: str = ""
    tokens: dict[str, float] = field(default_factory=dict)  # access token -> expiry
    refresh_tokens: set[str] = field(default_factory=set)
    # code -> (scope, nonce, redirect_uri, code_challenge, method)
    codes: dict[str, tuple[str, str, str, str, str]] = field(default_factory=dict)
    grants: list[str] = field(default_factory=list)
    refuse_refresh: bool = False
    client_certificate: x509.Certificate | None = None  # registered for certificate credentials
    public_clients: set[str] = field(default_factory=set)  # may redeem codes without a secret
    email: str = ""  # the signed-in user's email claim, when set
    # the signed-in user's group object ids, sent in the ID token's `groups` claim; past
    # Entra's limit for a JWT (200) only a pointer to Graph is sent instead (groups overage)
    groups: list[str] = field(default_factory=list)
    # an outage: while set, every endpoint (discovery, authorize, token) answers with this
    # status (503, say) and a temporarily_unavailable error, with Retry-After when
    # `retry_after` is set; `refused` counts the requests answered so
    unavailable: int = 0
    retry_after: str = ""
    refused: int = 0
    # ID tokens are signed with this RSA key (RS256, its kid in the header) and the key is
    # published at the jwks_uri, as Entra ID does; `forge_with` signs them with another key
    # that is not published (a token endpoint someone else answers)
    signing_key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    kid: str = "platform-key-1"
    forge_with: rsa.RSAPrivateKey | None = None
    # claims of the next ID tokens replaced (None: left out), as a misbehaving or hostile
    # token endpoint would write them
    claims_changed: dict[str, object] = field(default_factory=dict)

    def app(self) -> web.Application:
        app = web.Application()
        prefix = f"/{self.tenant}"
        app.router.add_get(prefix + "/v2.0/.well-known/openid-configuration", self._discovery)
        app.router.add_get(prefix + "/oauth2/v2.0/authorize", self._authorize)
        app.router.add_post(prefix + "/oauth2/v2.0/token", self._token)
        app.router.add_get(prefix + "/discovery/v2.0/keys", self._keys)
        return app

    async def _keys(self, request: web.Request) -> web.Response:
        down = self._down()
        if down is not None:
            return down
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.signing_key.public_key()))
        return web.json_response({"keys": [{**jwk, "kid": self.kid, "use": "sig", "alg": "RS256"}]})

    def _signed(self, claims: dict[str, object]) -> str:
        claims = {**claims, **self.claims_changed}
        claims = {name: value for name, value in claims.items() if value is not None}
        key = self.forge_with or self.signing_key
        return jwt.encode(claims, key, algorithm="RS256", headers={"kid": self.kid})

    @property
    def authority(self) -> str:
        return f"{self.base}/{self.tenant}"

    def valid(self, token: str) -> bool:
        expiry = self.tokens.get(token)
        return expiry is not None and expiry > time.time()

    def expire_all(self) -> None:
        for token in self.tokens:
            self.tokens[token] = 0.0

    def _down(self) -> web.Response | None:
        """The platform's answer while it cannot serve (`unavailable`), else None."""
        if not self.unavailable:
            return None
        self.refused += 1
        return web.json_response(
            {
                "error": "temporarily_unavailable",
                "error_description": "AADSTS90033: A transient error has occurred. "
                "Please try again.",
            },
            status=self.unavailable,
            headers={"Retry-After": self.retry_after} if self.retry_after else None,
        )

    async def _discovery(self, request: web.Request) -> web.Response:
        down = self._down()
        if down is not None:
            return down
        base = self.authority
        return web.json_response(
            {
                "issuer": f"{base}/v2.0",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "jwks_uri": f"{base}/discovery/v2.0/keys",
                "response_types_supported": ["code"],
            }
        )

    async def _authorize(self, request: web.Request) -> web.Response:
        """The admin signs in and consents at once; back to the redirect URI with a code."""
        down = self._down()
        if down is not None:
            return down
        query = request.query
        if query.get("client_id") != self.client_id:
            return web.Response(status=400, text="unknown client")
        method = query.get("code_challenge_method", "plain" if "code_challenge" in query else "")
        if method not in ("", "plain", "S256"):
            return web.Response(status=400, text="unsupported code_challenge_method")
        code = secrets.token_urlsafe(16)
        self.codes[code] = (
            query.get("scope", ""),
            query.get("nonce", ""),
            query.get("redirect_uri", ""),
            query.get("code_challenge", ""),
            method,
        )
        target = f"{query['redirect_uri']}?{urlencode({'code': code, 'state': query['state']})}"
        raise web.HTTPFound(target)

    @staticmethod
    def _pkce_ok(form: Any, challenge: str, method: str) -> bool:
        """RFC 7636 4.6: the verifier must match the challenge of the authorization request."""
        if not method:
            return True
        verifier = str(form.get("code_verifier", ""))
        if not 43 <= len(verifier) <= 128:
            return False
        if method == "plain":
            return secrets.compare_digest(verifier, challenge)
        digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode()
        return secrets.compare_digest(digest.rstrip("="), challenge)

    def _issue(self, scope: str, with_refresh: bool, nonce: str = "") -> dict[str, object]:
        access = secrets.token_urlsafe(24)
        self.tokens[access] = time.time() + self.token_lifetime
        body: dict[str, object] = {
            "token_type": "Bearer",
            "access_token": access,
            "expires_in": self.token_lifetime,
            "scope": scope,
        }
        if with_refresh:
            refresh = secrets.token_urlsafe(24)
            self.refresh_tokens.add(refresh)
            body["refresh_token"] = refresh
            body["id_token"] = self._signed(
                {
                    "iss": f"{self.authority}/v2.0",
                    "aud": self.client_id,
                    "tid": self.tenant,
                    "oid": "00000000-0000-0000-0000-00000000abcd",
                    "sub": "svc",
                    "preferred_username": self.user,
                    **({"email": self.email} if self.email else {}),
                    **self._groups_claim(),
                    "iat": int(time.time()),
                    "exp": int(time.time()) + 3600,
                    "ver": "2.0",
                    **({"nonce": nonce} if nonce else {}),
                }
            )
            body["client_info"] = (
                base64.urlsafe_b64encode(
                    json.dumps(
                        {"uid": "00000000-0000-0000-0000-00000000abcd", "utid": self.tenant}
                    ).encode()
                )
                .decode()
                .rstrip("=")
            )
        return body

    def _groups_claim(self) -> dict[str, object]:
        if len(self.groups) > GROUPS_IN_JWT:
            return {
                "_claim_names": {"groups": "src1"},
                "_claim_sources": {
                    "src1": {
                        "endpoint": "https://graph.microsoft.com/v1.0/users/"
                        "00000000-0000-0000-0000-00000000abcd/getMemberObjects"
                    }
                },
            }
        return {"groups": list(self.groups)} if self.groups else {}

    def _client_authenticated(self, form: Any, token_url: str) -> bool:
        """A client secret, or a client assertion: a JWT signed with the key of the certificate
        registered for the app (RS256/PS256, x5t or x5t#S256 naming it, aud the token URL,
        iss and sub the client id, not expired); nothing for a registered public client."""
        if form.get("client_id") in self.public_clients and not form.get("client_secret"):
            return True
        if form.get("client_secret") is not None:
            return form.get("client_secret") == self.client_secret
        assertion = form.get("client_assertion")
        if (
            self.client_certificate is None
            or form.get("client_assertion_type")
            != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
            or not assertion
        ):
            return False
        cert = self.client_certificate
        der = cert.public_bytes(serialization.Encoding.DER)
        names = {
            "x5t": base64.urlsafe_b64encode(hashlib.sha1(der).digest()).decode().rstrip("="),
            "x5t#S256": base64.urlsafe_b64encode(hashlib.sha256(der).digest()).decode().rstrip("="),
        }
        header = jwt.get_unverified_header(str(assertion))
        if not any(str(header.get(k, "")).rstrip("=") == v for k, v in names.items()):
            return False
        try:
            claims = jwt.decode(
                str(assertion),
                cert.public_key(),
                algorithms=["RS256", "PS256"],
                audience=token_url,
            )
        except jwt.PyJWTError:
            return False
        return claims.get("iss") == claims.get("sub") == self.client_id

    async def _token(self, request: web.Request) -> web.Response:
        down = self._down()
        if down is not None:
            return down
        form = await request.post()
        grant = str(form.get("grant_type"))
        self.grants.append(grant)
        if form.get("client_id") != self.client_id or not self._client_authenticated(
            form, f"{request.scheme}://{request.host}{request.path}"
        ):
            return web.json_response({"error": "invalid_client"}, status=401)
        scope = str(form.get("scope", ""))
        if grant == "client_credentials":
            return web.json_response(self._issue(scope, with_refresh=False))
        if grant == "authorization_code":
            issued = self.codes.pop(str(form.get("code")), None)
            if issued is None:
                return web.json_response({"error": "invalid_grant"}, status=400)
            _, nonce, redirect_uri, challenge, method = issued
            if redirect_uri and form.get("redirect_uri") != redirect_uri:
                return web.json_response(
                    {"error": "invalid_grant", "error_description": "redirect_uri mismatch"},
                    status=400,
                )
            if not self._pkce_ok(form, challenge, method):
                return web.json_response(
                    {"error": "invalid_grant", "error_description": "PKCE verification failed"},
                    status=400,
                )
            return web.json_response(self._issue(scope, with_refresh=True, nonce=nonce))
        if grant == "refresh_token":
            refresh = str(form.get("refresh_token"))
            if self.refuse_refresh or refresh not in self.refresh_tokens:
                return web.json_response(
                    {"error": "invalid_grant", "error_description": "AADSTS70043: expired"},
                    status=400,
                )
            self.refresh_tokens.discard(refresh)
            return web.json_response(self._issue(scope, with_refresh=True))
        return web.json_response({"error": "unsupported_grant_type"}, status=400)


@contextmanager
def running(
    directory: Path, email: str = "", **fields: Any
) -> Iterator[tuple[IdentityPlatform, Path]]:
    """A platform served over real TLS (its certificate written to `directory`), with the given
    fields (`client_id`, `client_secret`, …) and user email; yields it and the CA file to
    trust."""
    cert, key = tls_files(directory)
    platform = IdentityPlatform(**fields)
    platform.email = email
    server = ThreadedServer(platform.app(), ssl_context=server_context(cert, key)).start()
    platform.base = server.url
    try:
        yield platform, cert
    finally:
        server.stop()
