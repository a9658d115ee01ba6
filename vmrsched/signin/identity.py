"""Verifying the token the add-in sends with each request.

- Exchange identity tokens (Exchange Server on-premises): RS256 JWTs whose `appctx.amurl` names
  the metadata document holding the signing certificate (matched by the `x5t` header). Only
  configured metadata documents are ever fetched (a host name, or a URL without a path: that
  host's /autodiscover/metadata/json/1; a URL with a path: that document): a token cannot make
  us call out anywhere.
- Entra ID access tokens (Exchange Online, nested app authentication): verified against the
  configured tenant's OIDC discovery document and JWKS (issuer, audience, expiry, signature).
- `none` (loopback only, refused by config validation elsewhere): every caller is "anonymous".

Keys are cached; an unknown key id triggers one refresh (rate limited), so key rollover works and
a stream of bogus tokens cannot make us hammer the metadata host. Every fetch follows the
service's one proxy rule (vmrsched.proxies): aiohttp ignores the environment unless told, so
each call is given its proxy, none for an integration with disable_web_proxy.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from vmrsched.config import IntegrationConfig
from vmrsched.errors import Unauthorized, Unavailable
from vmrsched.proxies import proxy_for
from vmrsched.rules.meetings import is_address
from vmrsched.signin.claims import ENTRA_NAMED_BY, email_of

LEEWAY_SECONDS = 60
CACHE_SECONDS = 24 * 3600
REFRESH_MIN_INTERVAL = 60.0
FETCH_TIMEOUT = aiohttp.ClientTimeout(total=5)
METADATA_PATH = "/autodiscover/metadata/json/1"


class TokenError(Unauthorized):
    """The request's token is missing or not acceptable."""

    default_code = "invalid_token"


class MetadataUnavailable(Unavailable):
    """The keys a token is checked against cannot be fetched now (the identity provider or the
    Exchange server is down or answers wrongly): nothing is wrong with the caller's token, so
    this is a 503, on which the pane inserts its placeholder and the booking goes on."""

    default_code = "metadata_unavailable"


@dataclass(frozen=True)
class Identity:
    user: str  # a stable id for rate limiting and audit
    email: str = ""
    kind: str = "none"


class Verifier(Protocol):
    async def verify(self, token: str | None) -> Identity: ...


class AnonymousVerifier:
    async def verify(self, token: str | None) -> Identity:
        return Identity("anonymous", kind="none")


@dataclass
class _KeySet:
    keys: dict[str, Any] = field(default_factory=dict)
    fetched: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    missed: float = float("-inf")  # when an unknown key last caused a refresh

    def may_refresh(self, now: float) -> bool:
        """An unknown key refreshes at once, but at most once a minute: key rollover works and a
        stream of bogus tokens cannot make us hammer the metadata host."""
        return now - self.missed >= REFRESH_MIN_INTERVAL


def _b64url_sha1_ok(value: str) -> bool:
    try:
        return len(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))) == 20
    except ValueError:
        return False


def _header(token: str) -> dict[str, Any]:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise TokenError(f"malformed token: {exc}") from exc
    if header.get("alg") != "RS256":
        raise TokenError(f"unsupported algorithm {header.get('alg')!r}")
    return header


async def _get_json(
    session: aiohttp.ClientSession, url: str, direct: bool = False
) -> dict[str, Any]:
    """A JSON document from a key host; any failure is MetadataUnavailable (503)."""
    try:
        async with session.get(
            url, timeout=FETCH_TIMEOUT, allow_redirects=False, proxy=proxy_for(url, direct)
        ) as response:
            if response.status != 200:
                raise MetadataUnavailable(f"{url} answered {response.status}")
            data = await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise MetadataUnavailable(f"{url} unavailable: {exc}") from exc
    if not isinstance(data, dict):
        raise MetadataUnavailable(f"{url} is not a JSON object")
    return data


def _origin(scheme: str, host: str, port: int | None) -> str:
    default = {"https": 443, "http": 80}.get(scheme)
    return f"{scheme}://{host}" if port in (None, default) else f"{scheme}://{host}:{port}"


def _document(url: str) -> str | None:
    """A metadata URL as compared: scheme and host in lower case, the default port left out
    (Exchange writes https://host:443/…), the path as it is; None when it is not a URL."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if not parts.scheme or not parts.hostname:
        return None
    return _origin(parts.scheme.lower(), parts.hostname.lower(), port) + parts.path


def trusted_documents(urls: tuple[str, ...]) -> set[str]:
    """Configured metadata entries as the documents they allow: a bare FQDN, or a URL without
    a path, means that host's /autodiscover/metadata/json/1 over https (the URL's scheme);
    a URL with a path means that document."""
    documents = set()
    for entry in urls:
        url = entry if "://" in entry else f"https://{entry.rstrip('/')}"
        if urlsplit(url).path in ("", "/"):
            url = url.rstrip("/") + METADATA_PATH
        document = _document(url)
        if document is not None:
            documents.add(document)
    return documents


class ExchangeIdentityVerifier:
    def __init__(
        self,
        audience: str,
        metadata_urls: tuple[str, ...],
        session: Callable[[], aiohttp.ClientSession],
        clock: Callable[[], float] = time.time,
        direct: bool = False,
    ) -> None:
        self.audience = audience
        self.trusted = trusted_documents(metadata_urls)
        self.session = session
        self.direct = direct  # the integration turned the web proxy off
        self.clock = clock
        self._cache: dict[str, _KeySet] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def _amurl(self, token: str) -> str:
        try:
            claims = jwt.decode(token, options={"verify_signature": False})
            appctx = claims.get("appctx")
            context = json.loads(appctx) if isinstance(appctx, str) else appctx
        except (jwt.PyJWTError, ValueError) as exc:
            raise TokenError(f"malformed token: {exc}") from exc
        if not isinstance(context, dict) or context.get("version") != "ExIdTok.V1":
            raise TokenError("not an Exchange identity token (appctx.version)")
        amurl = context.get("amurl")
        if not isinstance(amurl, str):
            raise TokenError("token has no appctx.amurl")
        if urlsplit(amurl).query or _document(amurl) not in self.trusted:
            raise TokenError(f"metadata host of {amurl!r} is not configured", "untrusted_issuer")
        return amurl

    async def _keys(self, amurl: str, refresh: bool) -> _KeySet:
        cached = self._cache.get(amurl)
        now = self.clock()
        if (
            cached is not None
            and now - cached.fetched < CACHE_SECONDS
            and (not refresh or not cached.may_refresh(now))
        ):
            return cached
        lock = self._locks.setdefault(amurl, asyncio.Lock())
        async with lock:
            latest = self._cache.get(amurl)
            if latest is not cached and latest is not None:
                return latest  # another request refreshed while we waited
            keys = _KeySet(fetched=self.clock(), missed=self.clock() if refresh else float("-inf"))
            document = await _get_json(self.session(), amurl, self.direct)
            for entry in document.get("keys", []):
                try:
                    x5t = entry["keyinfo"]["x5t"]
                    der = base64.b64decode(entry["keyvalue"]["value"])
                    cert = x509.load_der_x509_certificate(der)
                except (KeyError, TypeError, ValueError):
                    continue
                keys.keys[x5t] = cert.public_key()
            self._cache[amurl] = keys
            return keys

    async def verify(self, token: str | None) -> Identity:
        if not token:
            raise TokenError("no token", "missing_token")
        header = _header(token)
        x5t = header.get("x5t")
        if not isinstance(x5t, str) or not _b64url_sha1_ok(x5t):
            raise TokenError("token has no valid x5t header")
        amurl = self._amurl(token)
        keys = await self._keys(amurl, refresh=False)
        if x5t not in keys.keys:
            keys = await self._keys(amurl, refresh=True)
        key = keys.keys.get(x5t)
        if not isinstance(key, RSAPublicKey):
            raise TokenError("signing certificate not found in metadata (unknown x5t)")
        claims = _decode(token, key, self.audience, None)
        context = (
            json.loads(claims["appctx"]) if isinstance(claims["appctx"], str) else claims["appctx"]
        )
        user = context.get("msexchuid")
        if not isinstance(user, str) or not user:
            raise TokenError("token has no appctx.msexchuid")
        return Identity(f"{amurl}#{user}", kind="exchange")


def _decode(token: str, key: Any, audience: str | list[str], issuer: str | None) -> dict[str, Any]:
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key=key,
            algorithms=["RS256"],
            audience=audience,
            issuer=issuer,
            leeway=LEEWAY_SECONDS,
            options={"require": ["exp", "nbf", "aud"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise TokenError("token expired", "expired_token") from exc
    except jwt.ImmatureSignatureError as exc:
        raise TokenError("token not yet valid", "invalid_token") from exc
    except jwt.InvalidAudienceError as exc:
        raise TokenError("token is for another audience", "invalid_audience") from exc
    except jwt.PyJWTError as exc:
        raise TokenError(f"invalid token: {exc}") from exc
    return claims


class EntraVerifier:
    """Entra ID (v2.0) access tokens for the add-in's app registration."""

    def __init__(
        self,
        tenant_id: str,
        audiences: list[str],
        authority: str,
        session: Callable[[], aiohttp.ClientSession],
        clock: Callable[[], float] = time.time,
        direct: bool = False,
        scope: str = "",
    ) -> None:
        self.direct = direct  # the integration turned the web proxy off
        self.tenant_id = tenant_id
        self.audiences = audiences
        self.scope = scope  # the delegated permission the pane asks for (`scp` must name it)
        self.discovery_url = (
            f"{authority.rstrip('/')}/{tenant_id}/v2.0/.well-known/openid-configuration"
        )
        self.session = session
        self.clock = clock
        self._keys = _KeySet()
        self._lock = asyncio.Lock()

    async def _keyset(self, refresh: bool) -> _KeySet:
        now = self.clock()
        current = self._keys
        if (
            current.keys
            and now - current.fetched < CACHE_SECONDS
            and (not refresh or not current.may_refresh(now))
        ):
            return current
        async with self._lock:
            if self._keys is not current:
                return self._keys  # another request refreshed while we waited
            discovery = await _get_json(self.session(), self.discovery_url, self.direct)
            jwks = await _get_json(self.session(), str(discovery["jwks_uri"]), self.direct)
            keys = _KeySet(
                fetched=self.clock(),
                extra={"issuer": discovery.get("issuer")},
                missed=self.clock() if refresh else float("-inf"),
            )
            for jwk in jwks.get("keys", []):
                if jwk.get("kty") == "RSA" and jwk.get("kid"):
                    keys.keys[jwk["kid"]] = jwt.algorithms.RSAAlgorithm.from_jwk(jwk)
            self._keys = keys
            return keys

    async def verify(self, token: str | None) -> Identity:
        if not token:
            raise TokenError("no token", "missing_token")
        header = _header(token)
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise TokenError("token has no kid header")
        keys = await self._keyset(refresh=False)
        if kid not in keys.keys:
            keys = await self._keyset(refresh=True)
        if kid not in keys.keys:
            raise TokenError("signing key not found (unknown kid)")
        issuer = str(keys.extra.get("issuer") or "").replace("{tenantid}", self.tenant_id)
        claims = _decode(token, keys.keys[kid], self.audiences, issuer)
        if claims.get("tid") != self.tenant_id:
            raise TokenError("token is from another tenant", "invalid_issuer")
        # an access token the user granted the pane: an ID token of the same app (aud its
        # client id) or an app-only token carries no such scope (Microsoft: validate scp)
        if self.scope and self.scope not in str(claims.get("scp") or "").split():
            raise TokenError(f"token does not grant the {self.scope} scope", "invalid_scope")
        user = claims.get("oid") or claims.get("sub")
        # the address a sign-in of the same person would give (`email`, unless the token
        # marks it unverified), else the tenant's own name of them: a UPN's domain is one the
        # tenant verified. Something that is not one address names nobody.
        email = email_of(claims, ENTRA_NAMED_BY)
        return Identity(
            f"entra:{self.tenant_id}:{user}", email if is_address(email) else "", kind="entra"
        )


def verifier_for(
    integ: IntegrationConfig, base_url: str, session: Callable[[], aiohttp.ClientSession]
) -> Verifier:
    ad = integ.addin
    direct = integ.advanced.disable_web_proxy
    if ad.token_validation == "exchange":
        audience = f"{base_url.rstrip('/')}/addin/{integ.name}/taskpane.html"
        return ExchangeIdentityVerifier(
            audience, integ.metadata.exchange_metadata_urls, session, direct=direct
        )
    if ad.token_validation == "entra":
        audiences = [ad.entra_client_id, f"api://{ad.server_fqdn}/{ad.entra_client_id}"]
        return EntraVerifier(
            ad.entra_tenant_id,
            audiences,
            ad.entra_authority,
            session,
            direct=direct,
            scope=ad.entra_scope,
        )
    return AnonymousVerifier()
