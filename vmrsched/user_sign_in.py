"""A user's explicit sign-in for personal VMRs, when the Outlook host gives no token that names
them (Exchange identity tokens carry no email): OAuth 2.0 authorization code with PKCE against
the configured provider (Entra ID, or AD FS with its resource identifier), opened by the pane in
an Office dialog. The result is a session token for the pane; the service keeps, per session,
the user's email and the provider's refresh token, encrypted at rest, and the session lasts until
the user signs out or the refresh token is refused.

Session tokens are random; only their SHA-256 is stored, so the sessions file holds nothing a
reader could present as a bearer token."""

from __future__ import annotations

import base64
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
from typing import Any
from urllib.parse import urlencode

import requests
from cryptography.fernet import Fernet, InvalidToken

from vmrsched.config import IntegrationConfig
from vmrsched.errors import BadRequest, Unauthorized, Unavailable
from vmrsched.journal import atomic_write

log = logging.getLogger("vmrsched.sign_in")

TOKEN_PREFIX = "vms1."  # tells a session token from a host's JWT
PENDING_SECONDS = 600  # an attempt must come back within ten minutes
MAX_PENDING = 10_000
REVERIFY_SECONDS = 24 * 3600  # a session older than this is refreshed before it is trusted
KEY_ENV = "VMRSCHED_SESSION_KEY"
HTTP_TIMEOUT = 15.0


class SignInRefused(BadRequest):
    default_code = "sign_in_refused"


@dataclass(frozen=True)
class _Pending:
    integration: str
    verifier: str
    nonce: str
    created: float


@dataclass(frozen=True)
class Session:
    token: str
    email: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _claims(jwt_text: str) -> dict[str, Any]:
    """The claims of an ID token received directly from the token endpoint over TLS (OpenID
    Connect Core 3.1.3.7: the TLS server validation stands in for the signature check)."""
    try:
        payload = jwt_text.split(".")[1]
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError) as exc:
        raise SignInRefused("the identity provider's ID token cannot be read") from exc
    if not isinstance(data, dict):
        raise SignInRefused("the identity provider's ID token cannot be read")
    return data


def email_of(claims: Mapping[str, Any]) -> str:
    """The user's email: Entra ID puts it in `email` or `preferred_username`, AD FS in `upn`,
    `email` or `unique_name`."""
    for key in ("email", "preferred_username", "upn", "unique_name"):
        value = claims.get(key)
        if isinstance(value, str) and "@" in value:
            return value.strip().lower()
    return ""


class UserSignIn:
    """Sign-in attempts (in memory: an attempt does not outlive a restart) and sessions (in
    `<data_dir>/sign-in/<integration>.json`, refresh tokens Fernet-encrypted with the key from
    VMRSCHED_SESSION_KEY or `<data_dir>/sign-in/key`, created with mode 0600)."""

    def __init__(
        self,
        data_dir: Path,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
        http_for: Callable[[IntegrationConfig], requests.Session] | None = None,
    ) -> None:
        self.directory = Path(data_dir) / "sign-in"
        self.environ = os.environ if environ is None else environ
        self.clock = clock
        plain = requests.Session()
        self.http_for = http_for or (lambda integ: plain)
        self._pending: dict[str, _Pending] = {}
        # each integration's sessions, read from disk once: this process is the only writer
        # (the data directory is locked), and every personal-VMR request looks one up
        self._sessions: dict[str, dict[str, dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self._fernet: Fernet | None = None

    # --- the attempt ---------------------------------------------------------------------------

    def start(self, integ: IntegrationConfig, redirect_uri: str) -> str:
        """Where the dialog goes: the provider's authorization endpoint with state, nonce and
        an S256 code challenge (the verifier stays here)."""
        p = integ.personal
        verifier = _b64(secrets.token_bytes(48))
        state = _b64(secrets.token_bytes(24))
        nonce = _b64(secrets.token_bytes(16))
        now = self.clock()
        with self._lock:
            self._expire(now)
            if len(self._pending) >= MAX_PENDING:
                raise Unavailable("too many sign-ins in progress; try again shortly", "busy")
            self._pending[state] = _Pending(integ.name, verifier, nonce, now)
        query = {
            "client_id": p.user_oauth_client_id,
            "response_type": "code",
            "redirect_uri": redirect_uri,
            "response_mode": "query",
            "scope": "openid email profile offline_access",
            "state": state,
            "nonce": nonce,
            "code_challenge": _b64(hashlib.sha256(verifier.encode()).digest()),
            "code_challenge_method": "S256",
            "prompt": "select_account",
        }
        if p.authentication_provider == "adfs":
            query["resource"] = p.adfs_resource_identifier
            query["scope"] = "openid email profile allatclaims"
        separator = "&" if "?" in p.user_oauth_authorization_uri else "?"
        return f"{p.user_oauth_authorization_uri}{separator}{urlencode(query)}"

    def _expire(self, now: float) -> None:
        stale = [s for s, p in self._pending.items() if now - p.created > PENDING_SECONDS]
        for state in stale:
            del self._pending[state]

    def finish(
        self, integ: IntegrationConfig, query: Mapping[str, str], redirect_uri: str
    ) -> Session:
        """Check the state (one use, not expired, this integration's), redeem the code with
        the PKCE verifier, read the user's email, open a session. Blocking (HTTP): call it
        from a worker thread."""
        if query.get("error"):
            detail = query.get("error_description") or query["error"]
            raise SignInRefused(f"the identity provider refused the sign-in: {detail[:300]}")
        state = query.get("state", "")
        with self._lock:
            self._expire(self.clock())
            pending = self._pending.pop(state, None) if state else None
        if pending is None or pending.integration != integ.name:
            raise SignInRefused("unknown or expired sign-in attempt; start again")
        code = query.get("code", "")
        if not code:
            raise SignInRefused("the identity provider sent no code")
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": pending.verifier,
        }
        answer = self._token_request(integ, form)
        claims = _claims(str(answer.get("id_token", ""))) if answer.get("id_token") else {}
        if not claims and answer.get("access_token"):  # AD FS without openid: the access token
            claims = _claims(str(answer["access_token"]))
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        p = integ.personal
        expected = {p.user_oauth_client_id, p.adfs_resource_identifier} - {""}
        if "id_token" in answer and not expected.intersection(map(str, audiences)):
            raise SignInRefused("the ID token is for another application")
        if "nonce" in claims and claims["nonce"] != pending.nonce:
            raise SignInRefused("the ID token answers another sign-in (nonce)")
        email = email_of(claims)
        if not email:
            raise SignInRefused("the identity provider did not say who signed in (no email)")
        token = TOKEN_PREFIX + _b64(secrets.token_bytes(32))
        self._save(integ.name, token, email, str(answer.get("refresh_token", "")))
        log.info("%s signed in for personal VMRs", email, extra={"integration": integ.name})
        return Session(token, email)

    def _token_request(self, integ: IntegrationConfig, form: dict[str, str]) -> dict[str, Any]:
        p = integ.personal
        form = {**form, "client_id": p.user_oauth_client_id}
        if p.authentication_provider == "adfs":
            form["resource"] = p.adfs_resource_identifier
        if p.azure_client_secret is not None:
            form["client_secret"] = p.azure_client_secret.reveal()
        try:
            response = self.http_for(integ).post(
                p.user_oauth_token_uri, data=form, timeout=HTTP_TIMEOUT
            )
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

    # --- sessions --------------------------------------------------------------------------------

    def email(self, integ: IntegrationConfig, token: str) -> str:
        """The email of a live session; refreshed at the provider once a day (blocking then).
        Unauthorized (sign_in_required) when the session is unknown or its refresh token is
        refused (the session is forgotten)."""
        sessions = self._load(integ.name)
        entry = sessions.get(_digest(token))
        if entry is None:
            raise Unauthorized("not signed in (or signed out); sign in again", "sign_in_required")
        if self.clock() - float(entry.get("verified", 0)) < REVERIFY_SECONDS:
            return str(entry["email"])
        refresh = self._decrypt(str(entry.get("refresh", "")))
        if not refresh:
            self._forget(integ.name, token)
            raise Unauthorized("the sign-in has expired; sign in again", "sign_in_required")
        try:
            answer = self._token_request(
                integ, {"grant_type": "refresh_token", "refresh_token": refresh}
            )
        except SignInRefused as exc:
            self._forget(integ.name, token)
            raise Unauthorized(
                "the sign-in can no longer be refreshed; sign in again", "sign_in_required"
            ) from exc
        email = str(entry["email"])
        self._save(integ.name, token, email, str(answer.get("refresh_token", "")) or refresh)
        return email

    def needs_refresh(self, integ: IntegrationConfig, token: str) -> bool:
        """Whether `email` would talk to the provider (the caller then uses a worker thread)."""
        entry = self._load(integ.name).get(_digest(token))
        return entry is not None and self.clock() - float(entry.get("verified", 0)) >= (
            REVERIFY_SECONDS
        )

    def sign_out(self, integ: IntegrationConfig, token: str) -> None:
        self._forget(integ.name, token)

    def _path(self, name: str) -> Path:
        return self.directory / f"{name}.json"

    def _load(self, name: str) -> dict[str, dict[str, Any]]:
        sessions = self._sessions.get(name)
        if sessions is None:
            sessions = self._sessions[name] = self._read(name)
        return sessions

    def _read(self, name: str) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self._path(name).read_bytes())
        except FileNotFoundError:
            return {}
        except ValueError:
            log.error("%s cannot be read: every session of %s is lost", self._path(name), name)
            return {}
        return data if isinstance(data, dict) else {}

    def _save(self, name: str, token: str, email: str, refresh: str) -> None:
        with self._lock:
            sessions = dict(self._load(name))
            sessions[_digest(token)] = {
                "email": email,
                "refresh": self._encrypt(refresh) if refresh else "",
                "verified": self.clock(),
            }
            self._write(name, sessions)

    def _forget(self, name: str, token: str) -> None:
        with self._lock:
            sessions = dict(self._load(name))
            if sessions.pop(_digest(token), None) is not None:
                self._write(name, sessions)

    def _write(self, name: str, sessions: dict[str, dict[str, Any]]) -> None:
        """Durable first, then what lookups see (a copy replaces the dict: readers on other
        threads never see one half-changed)."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(self._path(name), json.dumps(sessions, sort_keys=True).encode())
        os.chmod(self._path(name), 0o600)
        self._sessions[name] = sessions

    def _cipher(self) -> Fernet:
        if self._fernet is None:
            key = self.environ.get(KEY_ENV, "").strip()
            if not key:
                path = self.directory / "key"
                self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
                try:
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                except FileExistsError:
                    key = path.read_text().strip()
                else:
                    key = Fernet.generate_key().decode()
                    with os.fdopen(fd, "w") as handle:
                        handle.write(key + "\n")
                        handle.flush()
                        os.fsync(handle.fileno())
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
