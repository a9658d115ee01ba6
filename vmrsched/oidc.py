"""The OpenID Connect authorization code flow with PKCE, as two sign-ins use it: a user's for
personal VMRs (user_sign_in.py) and an admin's for the console (admin_sign_in.py). It keeps
the attempts in progress (state, nonce, verifier; in memory, ten minutes, one use each), builds
the authorization URL, redeems the code and reads the ID token.

The ID token comes straight from the token endpoint over TLS, so per OpenID Connect Core
3.1.3.7 the server's certificate stands in for the token's signature; its audience, issuer
(when configured), expiry and nonce are still checked here."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import requests

from vmrsched.errors import BadRequest, Unavailable

log = logging.getLogger("vmrsched.oidc")
_ERROR_CODE = re.compile(r"[a-z_]{1,40}")
_ENTRA_CODE = re.compile(r"AADSTS\d{1,9}")


def _codes(query: Mapping[str, str]) -> str:
    """What of a provider's refusal may be shown: the OAuth error code and an Entra ID
    AADSTS number, when they have those shapes; words, never (the log keeps them)."""
    codes = [query["error"]] if _ERROR_CODE.fullmatch(query.get("error", "")) else []
    entra = _ENTRA_CODE.match(query.get("error_description", ""))
    if entra:
        codes.append(entra.group(0))
    return f" ({', '.join(codes)}; the log says why)" if codes else " (the log says why)"


PENDING_SECONDS = 600  # an attempt must come back within ten minutes
MAX_PENDING = 10_000
HTTP_TIMEOUT = 15.0
CLOCK_SKEW_SECONDS = 300


class SignInRefused(BadRequest):
    default_code = "sign_in_refused"


@dataclass(frozen=True)
class Client:
    """One registration at one provider. `authorize_extra` and `token_extra` carry what a
    provider adds (AD FS: `resource`)."""

    authorization_uri: str
    token_uri: str
    client_id: str
    client_secret: str | None = None
    scope: str = "openid email profile"
    authorize_extra: Mapping[str, str] = field(default_factory=dict)
    token_extra: Mapping[str, str] = field(default_factory=dict)
    audiences: frozenset[str] = frozenset()  # also accepted as `aud` besides client_id
    issuer: str = ""  # when set, the ID token's `iss` must be exactly this


@dataclass(frozen=True)
class Attempt:
    """A sign-in in progress; `context` names what it is for (an integration, "admin")."""

    context: str
    verifier: str
    nonce: str
    created: float


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


class Attempts:
    """Sign-ins in progress, keyed by their state (never outlive a restart)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._pending: dict[str, Attempt] = {}
        self._lock = threading.Lock()

    def start(self, client: Client, redirect_uri: str, context: str, **extra: str) -> str:
        """The authorization URL for a new attempt: state, nonce and an S256 code challenge
        (the verifier stays here)."""
        verifier = b64(secrets.token_bytes(48))
        state = b64(secrets.token_bytes(24))
        nonce = b64(secrets.token_bytes(16))
        now = self.clock()
        with self._lock:
            self._expire(now)
            if len(self._pending) >= MAX_PENDING:
                raise Unavailable("too many sign-ins in progress; try again shortly", "busy")
            self._pending[state] = Attempt(context, verifier, nonce, now)
        query = {
            "client_id": client.client_id,
            "response_type": "code",
            "redirect_uri": redirect_uri,
            "response_mode": "query",
            "scope": client.scope,
            "state": state,
            "nonce": nonce,
            "code_challenge": b64(hashlib.sha256(verifier.encode()).digest()),
            "code_challenge_method": "S256",
            **client.authorize_extra,
            **extra,
        }
        separator = "&" if "?" in client.authorization_uri else "?"
        return f"{client.authorization_uri}{separator}{urlencode(query)}"

    def take(self, query: Mapping[str, str], context: str) -> tuple[Attempt, str]:
        """The attempt a redirect answers (removed: one use) and its code. SignInRefused for
        a provider's error, an unknown, expired or foreign state, or no code."""
        if query.get("error"):
            # the provider's words arrive through the browser's address bar, where anyone can
            # write them: logged for the admin, never put on our page
            log.warning(
                "the identity provider refused a sign-in (%s): %s: %s",
                context,
                query["error"][:100],
                query.get("error_description", "")[:300],
            )
            raise SignInRefused(f"the identity provider refused the sign-in{_codes(query)}")
        state = query.get("state", "")
        with self._lock:
            self._expire(self.clock())
            attempt = self._pending.pop(state, None) if state else None
        if attempt is None or attempt.context != context:
            raise SignInRefused("unknown or expired sign-in attempt; start again")
        code = query.get("code", "")
        if not code:
            raise SignInRefused("the identity provider sent no code")
        return attempt, code

    def _expire(self, now: float) -> None:
        stale = [s for s, a in self._pending.items() if now - a.created > PENDING_SECONDS]
        for state in stale:
            del self._pending[state]


def token_request(
    http: requests.Session, client: Client, form: Mapping[str, str]
) -> dict[str, Any]:
    """POST to the token endpoint. SignInRefused when the provider refuses (with its error
    and description), Unavailable when it cannot be reached or fails. Blocking."""
    body = {**form, **client.token_extra, "client_id": client.client_id}
    if client.client_secret is not None:
        body["client_secret"] = client.client_secret
    try:
        response = http.post(client.token_uri, data=body, timeout=HTTP_TIMEOUT)
    except requests.RequestException as exc:
        raise Unavailable(
            f"the identity provider cannot be reached: {exc}", "identity_provider_unreachable"
        ) from exc
    try:
        answer = response.json()
    except ValueError:
        answer = {}
    if response.status_code >= 500:
        raise Unavailable(
            f"the identity provider answered {response.status_code}",
            "identity_provider_unreachable",
        )
    if response.status_code != 200 or not isinstance(answer, dict):
        why = ""
        if isinstance(answer, dict):
            why = ": ".join(
                str(answer[k])[:300] for k in ("error", "error_description") if answer.get(k)
            )
        raise SignInRefused(f"the identity provider refused the code ({why or 'no reason'})")
    return answer


def redeem(
    http: requests.Session, client: Client, attempt: Attempt, code: str, redirect_uri: str
) -> dict[str, Any]:
    """The token endpoint's answer for a code, proven with the attempt's PKCE verifier."""
    return token_request(
        http,
        client,
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": attempt.verifier,
        },
    )


def read_claims(jwt_text: str) -> dict[str, Any]:
    """The claims of a token from the token endpoint (see the module docstring)."""
    try:
        payload = jwt_text.split(".")[1]
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError) as exc:
        raise SignInRefused("the identity provider's ID token cannot be read") from exc
    if not isinstance(data, dict):
        raise SignInRefused("the identity provider's ID token cannot be read")
    return data


def id_token_claims(client: Client, answer: Mapping[str, Any], attempt: Attempt) -> dict[str, Any]:
    """The checked claims of the answer's ID token: for this client, from the configured
    issuer, not expired, answering this attempt's nonce. A provider that sends no ID token
    (AD FS without `openid`) gives the access token's claims, unchecked. Expiry is judged by
    the real time: the provider wrote `exp` by its clock, not by an injected one."""
    id_token = answer.get("id_token")
    if not id_token:
        access = answer.get("access_token")
        return read_claims(str(access)) if access else {}
    claims = read_claims(str(id_token))
    audience = claims.get("aud")
    audiences = {str(a) for a in (audience if isinstance(audience, list) else [audience])}
    if not ({client.client_id} | client.audiences) & audiences:
        raise SignInRefused("the ID token is for another application")
    if client.issuer and claims.get("iss") != client.issuer:
        raise SignInRefused(f"the ID token comes from another issuer ({claims.get('iss')!r})")
    expires = claims.get("exp")
    if isinstance(expires, int | float) and expires + CLOCK_SKEW_SECONDS < time.time():
        raise SignInRefused("the ID token has expired (is this server's clock right?)")
    if "nonce" in claims and claims["nonce"] != attempt.nonce:
        raise SignInRefused("the ID token answers another sign-in (nonce)")
    return claims


def email_of(claims: Mapping[str, Any]) -> str:
    """The user's email: Entra ID puts it in `email` or `preferred_username`, AD FS in `upn`,
    `email` or `unique_name`."""
    for key in ("email", "preferred_username", "upn", "unique_name"):
        value = claims.get(key)
        if isinstance(value, str) and "@" in value:
            return value.strip().lower()
    return ""
