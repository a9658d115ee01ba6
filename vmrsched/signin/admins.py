"""An admin's OpenID Connect sign-in to /admin: the authorization code flow with PKCE against
the configured provider, admitting only members of the configured admin group. It answers who
signed in; the console's session (http/admin.py) carries that name into every logged act.

Entra ID lists group object ids in the `groups` claim, but when a user is in more groups than
fit in a token it sends `_claim_names` instead (the "groups overage"), and reading the list
would need a Graph call with a permission the service otherwise lacks: such a sign-in is
refused with the way out (an app role, `groups_claim = "roles"`).

The console's sessions after a sign-in are one port, `AdminSessions`: in this process's memory
(`MemoryAdminSessions`: one instance; a restart signs everyone out) or in the shared database
(`vmrsched.postgres.sessions.DatabaseAdminSessions`), so that any instance accepts a session
another opened."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import requests

from vmrsched.config import AdminSignInConfig
from vmrsched.errors import Forbidden
from vmrsched.signin import oidc, tenants
from vmrsched.signin.claims import email_of
from vmrsched.signin.oidc import SignInRefused

log = logging.getLogger("vmrsched.admin")

CONTEXT = "admin"
SESSION_SECONDS = 8 * 3600  # an admin's console session lasts a working day
MAX_SESSIONS = 1000  # in memory: the oldest goes first beyond this many


class AdminSessions(Protocol):
    """The console's sessions: a random id in the browser's cookie (never the admin token),
    living SESSION_SECONDS. Blocking where kept in a database: worker threads."""

    def create(self, who: str) -> str:
        """A new session for `who`; its id (the cookie's value)."""
        ...

    def who(self, sid: str) -> str | None:
        """Who opened this session, while it lives; None otherwise."""
        ...

    def end(self, sid: str) -> None: ...

    def csrf(self, sid: str) -> str:
        """The session's CSRF token: every form and every cookie-authenticated change must
        carry it (a bearer token cannot be sent by another site, a cookie can)."""
        ...


def session_digest(sid: str) -> str:
    """What is kept of a session id: its SHA-256 (a reader of the store learns no cookie)."""
    return hashlib.sha256(sid.encode()).hexdigest()


def csrf_token(key: bytes, sid: str) -> str:
    return hmac.new(key, sid.encode(), "sha256").hexdigest()


class MemoryAdminSessions:
    """Sessions in this process's memory: a restart signs everyone out."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._sessions: dict[str, tuple[float, str]] = {}  # digest -> (expiry, who)
        self._key = secrets.token_bytes(32)
        self._lock = threading.Lock()

    def create(self, who: str) -> str:
        now = self.clock()
        sid = secrets.token_urlsafe(32)
        with self._lock:
            for digest, (expires, _) in list(self._sessions.items()):
                if expires <= now:
                    del self._sessions[digest]
            while len(self._sessions) >= MAX_SESSIONS:
                del self._sessions[next(iter(self._sessions))]  # the oldest
            self._sessions[session_digest(sid)] = (now + SESSION_SECONDS, who)
        return sid

    def who(self, sid: str) -> str | None:
        entry = self._sessions.get(session_digest(sid))
        return entry[1] if entry is not None and entry[0] > self.clock() else None

    def end(self, sid: str) -> None:
        with self._lock:
            self._sessions.pop(session_digest(sid), None)

    def csrf(self, sid: str) -> str:
        return csrf_token(self._key, sid)


class NotAnAdmin(Forbidden):
    default_code = "not_an_admin"


def client_of(cfg: AdminSignInConfig) -> oidc.Client:
    resource = {"resource": cfg.resource} if cfg.resource else {}
    return oidc.Client(
        authorization_uri=cfg.authorization_uri,
        token_uri=cfg.token_uri,
        client_id=cfg.client_id,
        client_secret=cfg.client_secret.reveal() if cfg.client_secret else None,
        scope=cfg.scope,
        authorize_extra={**resource, "prompt": "select_account"},
        token_extra=resource,
        audiences=frozenset({cfg.resource} - {""}),
        issuer=cfg.issuer,
        keys_uri=oidc.keys_uri_for(cfg.authorization_uri),
    )


def groups_of(claims: Mapping[str, Any], claim: str) -> list[str]:
    """The groups (or roles) the token lists; NotAnAdmin when the provider left them out
    because there are too many."""
    value = claims.get(claim)
    names = claims.get("_claim_names")
    if value is None and isinstance(names, dict) and claim in names:
        raise NotAnAdmin(
            f"the identity provider left out the {claim!r} claim: the user is in too many "
            'groups. Assign an app role to the admin group and set groups_claim = "roles"'
        )
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [str(v) for v in value]
    return []


class AdminSignIn:
    """Admin sign-ins in progress (ten minutes each; in `attempts`, else this process's
    memory)."""

    def __init__(
        self,
        http_for: Callable[[AdminSignInConfig], requests.Session],
        clock: Callable[[], float] = time.time,
        attempts: oidc.AttemptStore | None = None,
    ) -> None:
        self.http_for = http_for
        self._attempts = oidc.Attempts(clock, attempts)

    def start(self, cfg: AdminSignInConfig, redirect_uri: str) -> str:
        """The provider's authorization URL for a new attempt."""
        return self._attempts.start(client_of(cfg), redirect_uri, CONTEXT)

    def finish(self, cfg: AdminSignInConfig, query: Mapping[str, str], redirect_uri: str) -> str:
        """Who signed in (their email), if a member of the admin group: SignInRefused for a
        bad attempt or answer, NotAnAdmin for anyone else. Blocking (HTTP)."""
        attempt, code = self._attempts.take(query, CONTEXT)
        client = client_of(cfg)
        http = self.http_for(cfg)
        answer = oidc.redeem(http, client, attempt, code, redirect_uri)
        if not answer.get("id_token"):
            raise SignInRefused("the identity provider sent no ID token (is openid in scope?)")
        claims = oidc.id_token_claims(client, answer, attempt, http)
        # an app role is a name the application declares, so any tenant the app is registered
        # in can grant it: on Entra ID only the configured tenant's admins are admins here
        tenants.check(client.authorization_uri, claims, http)
        who = email_of(claims) or str(claims.get("sub", ""))
        if not who:
            raise SignInRefused("the identity provider did not say who signed in")
        wanted = cfg.admin_group.casefold()
        if not any(g.casefold() == wanted for g in groups_of(claims, cfg.groups_claim)):
            raise NotAnAdmin(f"{who} is not in the admin group")
        return who
