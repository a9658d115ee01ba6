"""The OpenID Connect authorization code flow with PKCE, as two sign-ins use it: a user's for
personal VMRs (users.py) and an admin's for the console (admins.py). It keeps
the attempts in progress (state, nonce, verifier; ten minutes, one use each; in memory, or in the
shared database through an `AttemptStore`), builds
the authorization URL, redeems the code and reads the ID token.

The ID token's signature is verified against the provider's published keys where they are
known: Entra ID's and AD FS's key sets sit at a fixed place beside their authorization endpoint
(`keys_uri_for`). For any other provider the token comes straight from the token endpoint over
TLS (https is required), so per OpenID Connect Core 3.1.3.7 the server's certificate stands in
for the signature. Audience, issuer (when configured), expiry and nonce are checked always."""

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
from typing import Any, Protocol
from urllib.parse import urlencode

import jwt
import requests

from vmrsched.errors import BadRequest, Unavailable

log = logging.getLogger("vmrsched.signin.oidc")
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
MAX_PENDING = 10_000  # kept in memory at most: beyond, the oldest goes
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
    keys_uri: str = ""  # the provider's JSON Web Key Set: the ID token's signature is checked


def keys_uri_for(authorization_uri: str) -> str:
    """Where Entra ID (…/oauth2/v2.0/authorize → …/discovery/v2.0/keys) and AD FS
    (…/adfs/oauth2/authorize → …/adfs/discovery/keys) publish the keys their ID tokens are
    signed with; "" for a provider whose place we do not know."""
    base, _, _ = authorization_uri.partition("?")
    for tail, keys in (
        ("/oauth2/v2.0/authorize", "/discovery/v2.0/keys"),
        ("/adfs/oauth2/authorize", "/adfs/discovery/keys"),
    ):
        if base.endswith(tail):
            return base[: -len(tail)] + keys
    return ""


SIGNING_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "ES256"]
KEYS_TTL_SECONDS = 3600.0
_keys_cache: dict[str, tuple[float, dict[str, Any]]] = {}
_keys_lock = threading.Lock()


def _key_set(session: requests.Session, uri: str, refresh: bool = False) -> dict[str, Any]:
    """The provider's keys, fetched at most once an hour (again at once for an unknown key id:
    providers roll their keys)."""
    with _keys_lock:
        cached = _keys_cache.get(uri)
    if cached is not None and not refresh and time.monotonic() - cached[0] < KEYS_TTL_SECONDS:
        return cached[1]
    try:
        response = session.get(uri, timeout=10)
        response.raise_for_status()
        keys = response.json()
    except (requests.RequestException, ValueError) as exc:
        raise Unavailable(f"the identity provider's keys cannot be read: {exc}") from exc
    if not isinstance(keys, dict) or not isinstance(keys.get("keys"), list):
        raise SignInRefused("the identity provider's key set cannot be read")
    with _keys_lock:
        _keys_cache[uri] = (time.monotonic(), keys)
    return keys


def verify_signature(client: Client, id_token: str, session: requests.Session) -> None:
    """SignInRefused unless the ID token is signed by one of the provider's keys."""
    try:
        header = jwt.get_unverified_header(id_token)
    except jwt.PyJWTError as exc:
        raise SignInRefused("the identity provider's ID token cannot be read") from exc
    if header.get("alg") not in SIGNING_ALGORITHMS:
        raise SignInRefused("the ID token is not signed with an algorithm we take")
    kid = header.get("kid")
    for refresh in (False, True):
        found = [
            k
            for k in _key_set(session, client.keys_uri, refresh)["keys"]
            if isinstance(k, dict) and (kid is None or k.get("kid") == kid)
        ]
        if found:
            break
    else:
        raise SignInRefused(
            "the ID token is signed with a key the identity provider does not publish"
        )
    if header.get("alg") not in SIGNING_ALGORITHMS:
        raise SignInRefused("the ID token is not signed with an algorithm we take")
    for jwk in found:
        try:
            key = jwt.PyJWK.from_dict(jwk).key
            jwt.decode(
                id_token,
                key,
                algorithms=SIGNING_ALGORITHMS,
                options={"verify_aud": False, "verify_exp": False, "verify_iss": False},
            )
            return
        except jwt.PyJWTError:
            continue
    raise SignInRefused("the ID token's signature does not verify with the provider's keys")


@dataclass(frozen=True)
class Attempt:
    """A sign-in in progress; `context` names what it is for (an integration, "admin", or
    "ews:<integration>": the service account's sign-in, whose msal `flow` rides along)."""

    context: str
    verifier: str
    nonce: str
    created: float
    flow: Mapping[str, Any] | None = None


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


class AttemptStore(Protocol):
    """Where the sign-ins in progress wait for their callback: in this process's memory
    (`MemoryAttempts`, one instance) or in the shared database
    (`vmrsched.postgres.sessions.DatabaseAttempts`), so that a callback reaching another
    instance than the one that started the attempt finds it."""

    def put(self, state: str, attempt: Attempt) -> None:
        """Keep an attempt under its state. Quick: the front end calls it on its event loop.
        Bounded: a store that can keep no more drops its oldest attempts, or raises
        Unavailable (busy)."""
        ...

    def take(self, state: str) -> Attempt | None:
        """The attempt kept under `state`, removed (one use; None when unknown, taken
        already, or past PENDING_SECONDS by its own `created`). Blocking: a worker thread."""
        ...

    def context(self, state: str) -> str | None:
        """What the attempt kept under `state` is for, leaving it in place (None: unknown).
        Blocking: a worker thread."""
        ...


class MemoryAttempts:
    """Attempts in this process only: they never outlive a restart. At most MAX_PENDING are
    kept, the oldest dropped first: anyone can start sign-ins, and a flood of starts must
    neither grow memory nor turn away the next real user (whose attempt, the newest, is kept;
    one dropped answers "unknown or expired, start again" like one past its ten minutes)."""

    def __init__(self, clock: Callable[[], float] = time.time, cap: int | None = None) -> None:
        self.clock = clock
        self.cap = MAX_PENDING if cap is None else cap
        self._pending: dict[str, Attempt] = {}  # in the order they were put: oldest first
        self._lock = threading.Lock()

    def put(self, state: str, attempt: Attempt) -> None:
        with self._lock:
            self._expire(attempt.created)
            while len(self._pending) >= self.cap:
                del self._pending[next(iter(self._pending))]
            self._pending[state] = attempt

    def take(self, state: str) -> Attempt | None:
        with self._lock:
            self._expire(self.clock())
            return self._pending.pop(state, None)

    def context(self, state: str) -> str | None:
        with self._lock:
            found = self._pending.get(state)
        return found.context if found is not None else None

    def _expire(self, now: float) -> None:
        """Drop the attempts past their ten minutes, from the oldest until a fresh one: they
        were put in the order of their `created` (one missed after the clock stepped back is
        still refused when taken, and goes as the oldest in time)."""
        while self._pending:
            oldest = next(iter(self._pending))
            if now - self._pending[oldest].created <= PENDING_SECONDS:
                break
            del self._pending[oldest]


def attempt_to_json(attempt: Attempt) -> dict[str, Any]:
    return {
        "context": attempt.context,
        "verifier": attempt.verifier,
        "nonce": attempt.nonce,
        "created": attempt.created,
        **({"flow": dict(attempt.flow)} if attempt.flow is not None else {}),
    }


def attempt_from_json(data: Mapping[str, Any]) -> Attempt:
    flow = data.get("flow")
    return Attempt(
        str(data["context"]),
        str(data["verifier"]),
        str(data["nonce"]),
        float(data["created"]),
        dict(flow) if isinstance(flow, Mapping) else None,
    )


class Attempts:
    """Sign-ins in progress, keyed by their state, kept in `store` (this process's memory
    unless another is given)."""

    def __init__(
        self, clock: Callable[[], float] = time.time, store: AttemptStore | None = None
    ) -> None:
        self.clock = clock
        self.store: AttemptStore = store if store is not None else MemoryAttempts(clock)

    def start(self, client: Client, redirect_uri: str, context: str, **extra: str) -> str:
        """The authorization URL for a new attempt: state, nonce and an S256 code challenge
        (the verifier stays here)."""
        verifier = b64(secrets.token_bytes(48))
        state = b64(secrets.token_bytes(24))
        nonce = b64(secrets.token_bytes(16))
        self.store.put(state, Attempt(context, verifier, nonce, self.clock()))
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
        a provider's error, an unknown, expired or foreign state, or no code. Blocking (the
        store may be a database): a worker thread."""
        if query.get("error"):
            # the provider's words arrive through the browser's address bar, where anyone can
            # write them: for the log (the caller's one line about the refusal), never our page
            said = f"{query['error'][:100]}: {query.get('error_description', '')[:300]}"
            raise SignInRefused(
                f"the identity provider refused the sign-in{_codes(query)}",
                detail=f"the identity provider said {said}",
            )
        state = query.get("state", "")
        attempt = self.store.take(state) if state else None
        if attempt is not None and self.clock() - attempt.created > PENDING_SECONDS:
            attempt = None
        if attempt is None or attempt.context != context:
            raise SignInRefused("unknown or expired sign-in attempt; start again")
        code = query.get("code", "")
        if not code:
            raise SignInRefused("the identity provider sent no code")
        return attempt, code


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
        said = answer if isinstance(answer, dict) else {}
        shown = {k: str(said.get(k, ""))[:300] for k in ("error", "error_description")}
        log.warning("the identity provider refused the code (%s): %s", response.status_code, shown)
        raise SignInRefused("the identity provider refused the code" + _codes(shown))
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


def id_token_claims(
    client: Client,
    answer: Mapping[str, Any],
    attempt: Attempt,
    session: requests.Session | None = None,
) -> dict[str, Any]:
    """The checked claims of the answer's ID token: signed by the provider (where its keys are
    known, fetched with `session`), for this client, from the configured issuer, not expired,
    answering this attempt's nonce. A provider that sends no ID token (AD FS without `openid`)
    gives the access token's claims, unchecked. Expiry is judged by the real time: the
    provider wrote `exp` by its clock, not by an injected one."""
    id_token = answer.get("id_token")
    if not id_token:
        access = answer.get("access_token")
        return read_claims(str(access)) if access else {}
    if client.keys_uri:
        verify_signature(client, str(id_token), session or requests.Session())
    claims = read_claims(str(id_token))
    audience = claims.get("aud")
    audiences = {str(a) for a in (audience if isinstance(audience, list) else [audience])}
    if not ({client.client_id} | client.audiences) & audiences:
        raise SignInRefused("the ID token is for another application")
    issuer = client.issuer or expected_issuer(client.authorization_uri, claims)
    if issuer is not None and (not issuer or claims.get("iss") != issuer):
        raise SignInRefused(
            "the ID token comes from another issuer (the log says which)",
            detail=f"an ID token from {str(claims.get('iss'))[:300]!r}, not {issuer!r}",
        )
    expires = claims.get("exp")
    if not isinstance(expires, int | float):
        raise SignInRefused("the ID token says not when it expires (exp)")
    if expires + CLOCK_SKEW_SECONDS < time.time():
        raise SignInRefused("the ID token has expired (is this server's clock right?)")
    # OpenID Connect Core 3.1.3.7: a nonce sent must come back, unchanged; a token without
    # one could answer any sign-in
    if claims.get("nonce") != attempt.nonce:
        raise SignInRefused("the ID token answers another sign-in (nonce)")
    return claims


_GUID = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")


def expected_issuer(authorization_uri: str, claims: Mapping[str, Any]) -> str | None:
    """The `iss` an ID token from the provider behind `authorization_uri` must carry, or None
    for a provider whose issuer we cannot tell (then `issuer` must be configured to check it);
    "" when no issuer would do.

    - Entra ID (…/{tenant}/oauth2/v2.0/authorize): `https://host/{tid}/v2.0` for the token's
      own tenant id, which must be the configured tenant when that is a tenant id (a domain
      name, `organizations` or `common` name no id to compare);
    - AD FS (…/adfs/oauth2/authorize): `https://host/adfs`."""
    base, _, _ = authorization_uri.partition("?")
    entra = "/oauth2/v2.0/authorize"
    if base.endswith(entra):
        root, _, tenant = base[: -len(entra)].rpartition("/")
        tid = str(claims.get("tid") or "")
        if not tid:
            return ""  # Entra ID's tokens always name their tenant: this one matches nothing
        if _GUID.fullmatch(tenant) and tid.lower() != tenant.lower():
            return f"{root}/{tenant}/v2.0"  # what no token of another tenant carries
        return f"{root}/{tid}/v2.0"
    adfs = "/adfs/oauth2/authorize"
    if base.endswith(adfs):
        return base[: -len(adfs)] + "/adfs"
    return None
