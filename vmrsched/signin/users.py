"""A user's explicit sign-in for personal VMRs, when the Outlook host gives no token that names
them (Exchange identity tokens carry no email): OAuth 2.0 authorization code with PKCE against
the configured provider (Entra ID, or AD FS with its resource identifier), opened by the pane in
an Office dialog. The result is a session token for the pane; the service keeps, per session,
the user's email and the provider's refresh token, encrypted at rest, and the session lasts until
the user signs out or the refresh token is refused.

Session tokens are random; only their SHA-256 is stored, so the sessions hold nothing a reader
could present as a bearer token.

Where the sessions and the key are kept is one port, `SessionStore`: files under the data
directory (`FileSessions`, below: the default) or the shared database
(`vmrsched.postgres.sessions.DatabaseSessions`), so that a session opened through one instance
is accepted by every other. The attempts in progress are an `oidc.AttemptStore`.

Damage (DESIGN "Storage") loses nothing readable: a sessions file that no longer parses keeps
every session that still reads and is set aside as `<name>.damaged-<time>`; a key file that
is not a key is set aside and replaced by a new key (the refresh tokens encrypted with the old
one are lost: those users sign in again at their daily check). Both raise state_damaged."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import requests
from cryptography.fernet import Fernet, InvalidToken

from vmrsched.config import DataLayout, IntegrationConfig
from vmrsched.errors import Unauthorized
from vmrsched.rules.meetings import is_address
from vmrsched.signin import oidc, tenants
from vmrsched.signin.claims import email_of, says_false
from vmrsched.signin.oidc import SignInRefused
from vmrsched.store.journal import atomic_write, salvage_members, set_aside
from vmrsched.store.repair import usable_key
from vmrsched.telemetry import report_damaged

log = logging.getLogger("vmrsched.sign_in")

TOKEN_PREFIX = "vms1."  # tells a session token from a host's JWT
REVERIFY_SECONDS = 24 * 3600  # a session older than this is refreshed before it is trusted
KEY_ENV = "VMRSCHED_SESSION_KEY"


@dataclass(frozen=True)
class Session:
    token: str
    email: str
    # who signed in as the add-in names an Entra ID user (`entra:<tenant>:<object id>`, from the
    # ID token's tid and oid), so the reservations they made in Outlook are found as theirs; ""
    # where the provider names no such user (AD FS)
    user: str = ""


def user_of(claims: Mapping[str, Any]) -> str:
    """The add-in's name for the signed-in user (identity.py's for an Entra ID token), or ""."""
    tid, oid = claims.get("tid"), claims.get("oid")
    if isinstance(tid, str) and isinstance(oid, str) and tid and oid:
        return f"entra:{tid}:{oid}"
    return ""


UNVERIFIED_EMAIL = (
    "your account's email address is in a domain your organization has not verified, so this "
    "service cannot take it as yours: ask your administrator to give your account an address "
    "in one of the organization's verified domains"
)
NO_EMAIL = (
    "the identity provider did not send your email address, which this service knows you by: "
    "your account may have none, or the app registration does not include it. Your "
    'administrator can add the optional claim "email" to the ID token (app registration, '
    "Token configuration)"
)


def trusted_email(claims: Mapping[str, Any], adfs: bool) -> str:
    """The address a sign-in names its user by: bookings are their organizer's by address, so
    this one claim decides whose bookings a session sees and acts on (SignInRefused when it
    cannot be trusted). Entra ID: `email` alone, from the one tenant `tenants.check` admits,
    and refused when the token marks it unverified (`xms_edov`, or OpenID's `email_verified`,
    false). Never `preferred_username`: Microsoft says it is mutable and cannot be used for
    authorization. AD FS, the organization's own token service with no tenants and no
    `xms_edov`: `email`, else `upn` or `unique_name`, as its claim rules issue them."""
    if adfs:
        email = email_of(claims)
        if not email:
            raise SignInRefused("the identity provider did not say who signed in (no email)")
        return _one_address(email)
    address = claims.get("email")
    shown = str(address)[:254] if address is not None else ""
    if says_false(claims.get("xms_edov")) or says_false(claims.get("email_verified")):
        raise SignInRefused(
            UNVERIFIED_EMAIL, detail=f"the ID token marks {shown!r} unverified (xms_edov)"
        )
    if not isinstance(address, str) or "@" not in address:
        raise SignInRefused(NO_EMAIL, detail="no email claim in the ID token")
    return _one_address(address)


def _one_address(claim: str) -> str:
    """The claim as the address bookings are keyed by (lower case), or SignInRefused when it is
    not one address: a name no meeting's organizer can have must not name a session."""
    address = claim.strip().lower()
    if not is_address(address):
        raise SignInRefused(
            "the identity provider named the user by something that is not one email address",
            detail=f"the ID token's email is {claim[:254]!r}",
        )
    return address


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def client_of(integ: IntegrationConfig) -> oidc.Client:
    """The integration's registration for the sign-in (AD FS: its resource identifier rides
    on both requests and is an accepted audience)."""
    p = integ.personal
    adfs = p.authentication_provider == "adfs"
    resource = {"resource": p.adfs_resource_identifier} if adfs else {}
    return oidc.Client(
        authorization_uri=p.user_oauth_authorization_uri,
        token_uri=p.user_oauth_token_uri,
        client_id=p.user_oauth_client_id,
        client_secret=p.azure_client_secret.reveal() if p.azure_client_secret else None,
        scope="openid email profile allatclaims" if adfs else "openid email profile offline_access",
        authorize_extra={**resource, "prompt": "select_account"},
        token_extra=resource,
        audiences=frozenset({p.adfs_resource_identifier} - {""}),
        keys_uri=oidc.keys_uri_for(p.user_oauth_authorization_uri),
    )


class SessionStore(Protocol):
    """Every integration's sessions, by the SHA-256 of their token, and the key the refresh
    tokens in them are encrypted with. Blocking (files, or a database): worker threads."""

    def get(self, integration: str, digest: str) -> dict[str, Any] | None: ...

    def put(self, integration: str, digest: str, entry: dict[str, Any]) -> None:
        """Keep (or replace) a session, durable when this returns."""
        ...

    def delete(self, integration: str, digest: str) -> None: ...

    def key(self) -> str:
        """The Fernet key for refresh tokens, made at the first need and kept."""
        ...


class FileSessions:
    """Sessions in `<data_dir>/sign-in/<integration>.json`, the key in `<data_dir>/sign-in/key`
    (both mode 0600). Each integration's file is read once: this process is the only writer
    (the data directory is locked), and every personal-VMR request looks a session up."""

    def __init__(self, data_dir: Path, clock: Callable[[], float] = time.time) -> None:
        self.directory = DataLayout(data_dir).sign_in
        self.clock = clock
        self._sessions: dict[str, dict[str, dict[str, Any]]] = {}
        self._lock = threading.RLock()  # writes, and the first read of a file (it may repair)

    def get(self, integration: str, digest: str) -> dict[str, Any] | None:
        return self.sessions(integration).get(digest)

    def put(self, integration: str, digest: str, entry: dict[str, Any]) -> None:
        with self._lock:
            sessions = dict(self.sessions(integration))
            sessions[digest] = entry
            self._write(integration, sessions)

    def delete(self, integration: str, digest: str) -> None:
        with self._lock:
            sessions = dict(self.sessions(integration))
            if sessions.pop(digest, None) is not None:
                self._write(integration, sessions)

    def integrations(self) -> list[str]:
        """The integrations with a sessions file (for moving them between backends)."""
        if not self.directory.is_dir():
            return []
        return sorted(p.stem for p in self.directory.glob("*.json"))

    def replace(self, integration: str, sessions: dict[str, dict[str, Any]]) -> None:
        """Every session of an integration, as given (moving them between backends)."""
        with self._lock:
            self._write(integration, dict(sessions))

    def _path(self, name: str) -> Path:
        return self.directory / f"{name}.json"

    def sessions(self, name: str) -> dict[str, dict[str, Any]]:
        sessions = self._sessions.get(name)
        if sessions is None:
            with self._lock:
                sessions = self._sessions.get(name)
                if sessions is None:
                    sessions = self._sessions[name] = self._read(name)
        return sessions

    def _read(self, name: str) -> dict[str, dict[str, Any]]:
        path = self._path(name)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return {}
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        if isinstance(data, dict) and all(isinstance(v, dict) for v in data.values()):
            return data
        # damage (writes are atomic): keep what reads, set the file aside, say so
        sessions = {
            k: v for k, v in salvage_members(raw).items() if isinstance(v.get("email"), str)
        }
        aside = set_aside(path, self.clock())
        if sessions:
            self._write(name, sessions)
        what = f"{len(sessions)} readable session(s) kept, the others must sign in again"
        log.error(
            "%s is damaged (kept as %s): %s", path, aside.name, what, extra={"integration": name}
        )
        report_damaged(name, aside, what)
        return sessions

    def _write(self, name: str, sessions: dict[str, dict[str, Any]]) -> None:
        """Durable first, then what lookups see (a copy replaces the dict: readers on other
        threads never see one half-changed)."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(self._path(name), json.dumps(sessions, sort_keys=True).encode())
        os.chmod(self._path(name), 0o600)
        self._sessions[name] = sessions

    def key(self) -> str:
        """The key in `<data_dir>/sign-in/key`, made at the first need. One that is not a key
        is set aside and replaced: what it encrypted is lost, and that is said plainly."""
        with self._lock:
            return self._key_file()

    def _key_file(self) -> str:
        path = self.directory / "key"
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            existing = path.read_bytes().decode("ascii", errors="replace").strip()
        except FileNotFoundError:
            existing = None
        if existing is not None:
            if usable_key(existing):
                return existing
            aside = set_aside(path, self.clock())
            log.error(
                "%s is not a usable key (kept as %s): a new key is made; every personal-VMR "
                "sign-in made before it must sign in again (at its daily check, within 24 h)",
                path,
                aside.name,
            )
            report_damaged(
                "service",
                aside,
                "not a usable key: a new one replaced it; sign-ins made before must sign in again",
            )
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return path.read_text().strip()
        key = Fernet.generate_key().decode()
        with os.fdopen(fd, "w") as handle:
            handle.write(key + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        return key

    def set_key(self, key: str) -> None:
        """Keep `key` as the key (moving the sessions between backends)."""
        with self._lock:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            path = self.directory / "key"
            atomic_write(path, (key + "\n").encode())
            os.chmod(path, 0o600)


class UserSignIn:
    """Sign-in attempts (an `oidc.AttemptStore`: this process's memory unless another is given)
    and sessions (a `SessionStore`: files under the data directory unless another is given;
    refresh tokens Fernet-encrypted with the key from VMRSCHED_SESSION_KEY, else the store's)."""

    def __init__(
        self,
        data_dir: Path,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
        http_for: Callable[[IntegrationConfig], requests.Session] | None = None,
        *,
        store: SessionStore | None = None,
        attempts: oidc.AttemptStore | None = None,
    ) -> None:
        self.store: SessionStore = store if store is not None else FileSessions(data_dir, clock)
        self.environ = os.environ if environ is None else environ
        self.clock = clock
        plain = requests.Session()
        self.http_for = http_for or (lambda integ: plain)
        self._attempts = oidc.Attempts(clock, attempts)
        self._lock = threading.Lock()
        self._fernet: Fernet | None = None

    # --- the attempt ---------------------------------------------------------------------------

    def start(self, integ: IntegrationConfig, redirect_uri: str) -> str:
        """Where the dialog goes: the provider's authorization URL for a new attempt."""
        return self._attempts.start(client_of(integ), redirect_uri, integ.name)

    def finish(
        self, integ: IntegrationConfig, query: Mapping[str, str], redirect_uri: str
    ) -> Session:
        """Check the state (one use, not expired, this integration's), redeem the code with
        the PKCE verifier, check the ID token (oidc; Entra ID: of the configured tenant only),
        take the user's email from it (`trusted_email`), open a session. Blocking (HTTP): call
        it from a worker thread."""
        attempt, code = self._attempts.take(query, integ.name)
        client = client_of(integ)
        http = self.http_for(integ)
        answer = oidc.redeem(http, client, attempt, code, redirect_uri)
        claims = oidc.id_token_claims(client, answer, attempt, http)
        adfs = integ.personal.authentication_provider == "adfs"
        if not adfs:
            tenants.check(client.authorization_uri, claims, http)
        email = trusted_email(claims, adfs)
        token = TOKEN_PREFIX + oidc.b64(secrets.token_bytes(32))
        user = user_of(claims)
        self._save(integ.name, token, email, str(answer.get("refresh_token", "")), user)
        return Session(token, email, user)

    # --- sessions --------------------------------------------------------------------------------

    def email(self, integ: IntegrationConfig, token: str) -> str:
        """The email of a live session; refreshed at the provider once a day (blocking then).
        Unauthorized (sign_in_required) when the session is unknown or its refresh token is
        refused (the session is forgotten)."""
        entry = self.store.get(integ.name, _digest(token))
        if entry is None:
            raise Unauthorized("not signed in (or signed out); sign in again", "sign_in_required")
        if self.clock() - float(entry.get("verified", 0)) < REVERIFY_SECONDS:
            return str(entry["email"])
        refresh = self._decrypt(str(entry.get("refresh", "")))
        if not refresh:
            self._forget(integ.name, token)
            raise Unauthorized("the sign-in has expired; sign in again", "sign_in_required")
        try:
            answer = oidc.token_request(
                self.http_for(integ),
                client_of(integ),
                {"grant_type": "refresh_token", "refresh_token": refresh},
            )
        except SignInRefused as exc:
            self._forget(integ.name, token)
            raise Unauthorized(
                "the sign-in can no longer be refreshed; sign in again", "sign_in_required"
            ) from exc
        email = str(entry["email"])
        refreshed = str(answer.get("refresh_token", "")) or refresh
        self._save(integ.name, token, email, refreshed, str(entry.get("user", "")))
        return email

    def user(self, integ: IntegrationConfig, token: str) -> str:
        """The add-in's name for a session's user (see Session.user); "" when unknown. Ask
        `email` first: this one neither checks nor refreshes the session."""
        entry = self.store.get(integ.name, _digest(token))
        return str(entry.get("user", "")) if entry is not None else ""

    def needs_refresh(self, integ: IntegrationConfig, token: str) -> bool:
        """Whether `email` would talk to the provider (the caller then uses a worker thread)."""
        entry = self.store.get(integ.name, _digest(token))
        return entry is not None and self.clock() - float(entry.get("verified", 0)) >= (
            REVERIFY_SECONDS
        )

    def sign_out(self, integ: IntegrationConfig, token: str) -> None:
        self._forget(integ.name, token)

    def _save(self, name: str, token: str, email: str, refresh: str, user: str = "") -> None:
        self.store.put(
            name,
            _digest(token),
            {
                "email": email,
                "refresh": self._encrypt(refresh) if refresh else "",
                "verified": self.clock(),
                **({"user": user} if user else {}),
            },
        )

    def _forget(self, name: str, token: str) -> None:
        self.store.delete(name, _digest(token))

    def _cipher(self) -> Fernet:
        if self._fernet is None:
            with self._lock:
                if self._fernet is None:
                    key = self.environ.get(KEY_ENV, "").strip() or self.store.key()
                    self._fernet = Fernet(key.encode())
        return self._fernet

    def _encrypt(self, text: str) -> str:
        return self._cipher().encrypt(text.encode()).decode()

    def _decrypt(self, text: str) -> str:
        if not text:
            return ""
        try:
            return self._cipher().decrypt(text.encode()).decode()
        except InvalidToken:
            log.error("a refresh token cannot be decrypted (was the session key changed?)")
            return ""
