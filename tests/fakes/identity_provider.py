"""A fake identity provider: mints RSA keys and certificates, signs tokens like Exchange Server
(identity tokens with appctx and x5t) and Entra ID (v2.0 access tokens with kid), and serves the
Exchange metadata document and the OIDC discovery + JWKS documents over real HTTP."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID


@dataclass
class SigningKey:
    private: rsa.RSAPrivateKey
    cert_der: bytes

    @classmethod
    def new(cls, name: str = "Exchange Server Auth Certificate") -> SigningKey:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(private.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=365))
            .sign(private, hashes.SHA256())
        )
        return cls(private, cert.public_bytes(serialization.Encoding.DER))

    @property
    def x5t(self) -> str:
        return base64.urlsafe_b64encode(hashlib.sha1(self.cert_der).digest()).decode().rstrip("=")

    @property
    def pem(self) -> bytes:
        return self.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def jwk(self, kid: str) -> dict[str, Any]:
        data = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key()))
        data.update(kid=kid, use="sig", alg="RS256")
        return dict(data)


@dataclass
class IdentityProvider:
    exchange_keys: list[SigningKey] = field(default_factory=lambda: [SigningKey.new()])
    entra_keys: dict[str, SigningKey] = field(default_factory=lambda: {"k1": SigningKey.new()})
    tenant: str = "11111111-2222-3333-4444-555555555555"
    base: str = ""
    requests: list[str] = field(default_factory=list)
    down: bool = False  # an outage: every document answers 503, as a server in trouble does

    # --- HTTP -----------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._outage])
        app.router.add_get("/autodiscover/metadata/json/1", self._metadata)
        app.router.add_get("/{tenant}/v2.0/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/{tenant}/discovery/v2.0/keys", self._jwks)
        return app

    @web.middleware
    async def _outage(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.down:
            self.requests.append(request.path)
            return web.Response(status=503, text="Service Unavailable")
        response: web.StreamResponse = await handler(request)
        return response

    async def _metadata(self, request: web.Request) -> web.Response:
        self.requests.append(request.path)
        return web.json_response(
            {
                "id": "_00000002-0000-0ff1-ce00-000000000000",
                "version": "1.0",
                "name": "Exchange",
                "realm": "",
                "serviceName": "00000002-0000-0ff1-ce00-000000000000",
                "issuer": "00000002-0000-0ff1-ce00-000000000000@contoso.example",
                "allowedAudiences": [],
                "keys": [
                    {
                        "usage": "signing",
                        "keyinfo": {"x5t": k.x5t},
                        "keyvalue": {
                            "type": "x509Certificate",
                            "value": base64.b64encode(k.cert_der).decode(),
                        },
                    }
                    for k in self.exchange_keys
                ],
            }
        )

    async def _discovery(self, request: web.Request) -> web.Response:
        self.requests.append(request.path)
        tenant = request.match_info["tenant"]
        return web.json_response(
            {
                "issuer": f"{self.base}/{{tenantid}}/v2.0",
                "jwks_uri": f"{self.base}/{tenant}/discovery/v2.0/keys",
            }
        )

    async def _jwks(self, request: web.Request) -> web.Response:
        self.requests.append(request.path)
        return web.json_response({"keys": [k.jwk(kid) for kid, k in self.entra_keys.items()]})

    # --- tokens ---------------------------------------------------------------------------
    def exchange_token(
        self,
        audience: str,
        amurl: str | None = None,
        *,
        key: SigningKey | None = None,
        lifetime: int = 3600,
        not_before: int = -60,
        uid: str = "user-1",
        x5t: str | None = None,
        alg: str = "RS256",
    ) -> str:
        key = key or self.exchange_keys[0]
        now = int(time.time())
        claims = {
            "aud": audience,
            "iss": "00000002-0000-0ff1-ce00-000000000000@contoso.example",
            "nbf": now + not_before,
            "exp": now + lifetime,
            "appctxsender": "00000002-0000-0ff1-ce00-000000000000@contoso.example",
            "isbrowserhostedapp": "True",
            "appctx": json.dumps(
                {
                    "msexchuid": uid,
                    "version": "ExIdTok.V1",
                    "amurl": amurl or f"{self.base}/autodiscover/metadata/json/1",
                }
            ),
        }
        headers = {"x5t": x5t or key.x5t}
        if alg == "none":
            return jwt.encode(claims, None, algorithm="none", headers=headers)
        return jwt.encode(claims, key.pem, algorithm=alg, headers=headers)

    def entra_token(
        self,
        audience: str,
        *,
        kid: str = "k1",
        tenant: str | None = None,
        issuer: str | None = None,
        lifetime: int = 3600,
        key: SigningKey | None = None,
        scp: str | None = "access_as_user",  # None: no scp claim (an ID token, an app token)
    ) -> str:
        tenant = tenant or self.tenant
        key = key or self.entra_keys[kid]
        now = int(time.time())
        claims = {
            "aud": audience,
            "iss": issuer or f"{self.base}/{tenant}/v2.0",
            "tid": tenant,
            "nbf": now - 60,
            "exp": now + lifetime,
            "iat": now - 60,
            "oid": "00000000-aaaa-bbbb-cccc-000000000001",
            "preferred_username": "ann@contoso.example",
            **({"scp": scp} if scp is not None else {}),
        }
        return jwt.encode(claims, key.pem, algorithm="RS256", headers={"kid": kid})
