"""OAuth tokens for EWS, through msal.

- oauth_app: the client credentials grant; msal caches the token until it nearly expires.
- oauth_delegated: the service account signs in once in a browser (authorization code flow,
  started from the admin page); msal's token cache, with the refresh token, is kept in a
  `TokenCacheStore` (under data_dir with file mode 0600: `FileTokenCache`; or in the shared
  database, written by the integration's owner only: `vmrsched.postgres.tokens`) and refreshes
  the access token on its own. When the refresh fails the service needs a new sign-in:
  `SignInRequired` carries the alarm name for that.

An identity platform that cannot serve (unreachable, answering 5xx) is an outage like Exchange's
own, never a crash nor a lost sign-in: msal talks to it through `IdentityHttp`, which gives each
call a timeout and turns a 5xx answer into the requests error msal treats as an outage (it then
keeps using a still-valid token it holds, and caches no refusal), and every msal failure
becomes a transient GatewayError carrying the platform's Retry-After.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import msal
import requests

from vmrsched.config import DataLayout, ExchangeConfig
from vmrsched.config.addresses import TOKEN_ENDPOINT_FORMS, token_authority
from vmrsched.mailbox.base import GatewayError, retry_after_seconds
from vmrsched.mailbox.sessions import CaSession
from vmrsched.proxies import use_rule
from vmrsched.store import OwnershipLostError
from vmrsched.store.repair import read_or_set_aside
from vmrsched.telemetry import SIGN_IN_REQUIRED

log = logging.getLogger("vmrsched.exchange")

SIGN_IN_ALARM = SIGN_IN_REQUIRED
TOKEN_TIMEOUT = 10.0  # seconds to wait for the identity platform's answer
# what an msal call raises when the identity platform cannot be used: unreachable, timed out,
# answering 5xx (MsalServiceError, or our HTTPError), or with something that is not an answer
IDENTITY_ERRORS = (ValueError, OSError, requests.RequestException, msal.exceptions.MsalError)


class IdentityHttp:
    """The HTTP client msal reaches the identity platform through: the given session, a timeout
    on every call (msal sets none on a client it is handed), and a 5xx answer raised as the
    requests.HTTPError msal handles as an outage instead of its own MsalServiceError (so a
    still-valid cached token is used meanwhile, and no refusal is cached past the outage)."""

    def __init__(self, session: requests.Session) -> None:
        self.session = session

    def get(self, *args: Any, **kwargs: Any) -> requests.Response:
        return self._answered(self.session.get(*args, **self._timed(kwargs)))

    def post(self, *args: Any, **kwargs: Any) -> requests.Response:
        return self._answered(self.session.post(*args, **self._timed(kwargs)))

    def close(self) -> None:
        """The session is its owner's to close."""

    @staticmethod
    def _timed(kwargs: dict[str, Any]) -> dict[str, Any]:
        return {**kwargs, "timeout": kwargs.get("timeout") or TOKEN_TIMEOUT}

    @staticmethod
    def _answered(response: requests.Response) -> requests.Response:
        if response.status_code >= 500:
            raise requests.HTTPError(
                f"the identity platform answered {response.status_code} {response.reason}",
                response=response,
            )
        return response


def identity_failure(exc: BaseException, what: str) -> GatewayError:
    """An msal call that failed for want of the identity platform, as the outage it is (the
    integration's usual alarm, its backoff), waiting as long as the platform asked."""
    response = getattr(exc, "response", None)
    value = str(response.headers.get("Retry-After", "")) if response is not None else ""
    return GatewayError(f"{what}: {exc}", retry_after=retry_after_seconds(value))


class SignInRequired(GatewayError):
    def __init__(self, message: str) -> None:
        super().__init__(message, alarm=SIGN_IN_ALARM)


class TokenSource(Protocol):
    def get(self, force: bool = False) -> str:
        """A current access token; `force` asks for a new one (the last was refused)."""
        ...


def authority_of(token_endpoint: str) -> str:
    """msal wants the authority; admins configure endpoints (the forms check-config accepts,
    vmrsched.config.addresses.token_authority)."""
    authority = token_authority(token_endpoint)
    if authority is None:
        raise GatewayError(
            f"cannot tell the authority from token endpoint {token_endpoint!r}: it must be "
            + " or ".join(TOKEN_ENDPOINT_FORMS)
        )
    return authority


def authorization_url(endpoint: str, auth_uri: str) -> str:
    """msal's authorization request sent to the configured endpoint: its query (and the
    endpoint's own, first) on the endpoint's address."""
    if not endpoint:
        return auth_uri
    ours, theirs = urlsplit(endpoint), urlsplit(auth_uri)
    query = "&".join(q for q in (ours.query, theirs.query) if q)
    return urlunsplit((ours.scheme, ours.netloc, ours.path, query, ""))


def default_scope(ex: ExchangeConfig, delegated: bool) -> str:
    if ex.oauth_scope:
        return ex.oauth_scope
    parts = urlsplit(ex.ews_url)
    origin = f"https://{parts.hostname}"
    return f"{origin}/EWS.AccessAsUser.All" if delegated else f"{origin}/.default"


def _msal_app(
    ex: ExchangeConfig, cache: msal.TokenCache | None = None, direct: bool = False
) -> Any:
    """An msal client for the configured token endpoint. Creating one fetches the authority's
    OIDC document, so it happens on first use, in an actor thread, never while starting.
    `direct`: the integration turned the web proxy off."""
    secret = ex.oauth_client_secret.reveal() if ex.oauth_client_secret else None
    try:
        return msal.ConfidentialClientApplication(
            ex.oauth_client_id,
            client_credential=secret,
            authority=authority_of(ex.oauth_token_endpoint),
            validate_authority=False,
            instance_discovery=False,
            token_cache=cache,
            http_client=IdentityHttp(use_rule(CaSession(ex.tls_ca_file), direct)),
        )
    except IDENTITY_ERRORS as exc:
        raise identity_failure(exc, "token endpoint unreachable") from exc


def _token(result: dict[str, Any] | None, what: str) -> str:
    if not result or "access_token" not in result:
        detail = (result or {}).get("error_description") or (result or {}).get("error") or "none"
        raise GatewayError(f"{what}: no access token ({detail})")
    return str(result["access_token"])


class AppTokens:
    def __init__(self, ex: ExchangeConfig, direct: bool = False) -> None:
        self.ex = ex
        self.direct = direct  # the integration turned the web proxy off
        self.scope = default_scope(ex, delegated=False)
        self._lock = threading.Lock()
        self._app: Any = None

    def get(self, force: bool = False) -> str:
        with self._lock:
            if force or self._app is None:
                self._app = None  # rebuilt next time should this fail
                # a fresh cache: msal would reuse the old token
                self._app = _msal_app(self.ex, direct=self.direct)
            try:
                result = self._app.acquire_token_for_client(scopes=[self.scope])
            except IDENTITY_ERRORS as exc:
                raise identity_failure(exc, "token endpoint unreachable") from exc
            return _token(result, "client credentials grant")


class TokenCacheStore(Protocol):
    """Where one integration's delegated token cache is kept, with whose it is (the app, the
    token endpoint, the account). Blocking: actor or worker threads."""

    def load(self) -> tuple[str | None, dict[str, str] | None]:
        """The serialized cache (None: none kept) and the identity recorded with it (None:
        none recorded)."""
        ...

    def save(self, cache: str, identity: dict[str, str]) -> None:
        """Keep the cache, durable when this returns. In a shared database only the
        integration's owner writes: OwnershipLostError (nothing written) elsewhere."""
        ...

    def drop(self) -> None:
        """Forget the cache (it belonged to another service account)."""
        ...


class FileTokenCache:
    """`<data_dir>/oauth/<integration>.json` (mode 0600) and `<integration>.identity.json`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def identity_path(self) -> Path:
        return self.path.with_name(f"{self.path.stem}.identity.json")

    def load(self) -> tuple[str | None, dict[str, str] | None]:
        # a damaged cache is set aside (alarm state_damaged) and the account signs in again
        raw = read_or_set_aside(
            self.path, json.loads, self.path.stem, "the service account must sign in again"
        )
        try:
            recorded = json.loads(self.identity_path.read_text())
        except (OSError, ValueError):
            recorded = None
        identity = (
            {str(k): str(v) for k, v in recorded.items()} if isinstance(recorded, dict) else None
        )
        return (raw.decode() if raw is not None else None), identity

    def save(self, cache: str, identity: dict[str, str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(cache)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)
        os.chmod(self.path, 0o600)
        self.identity_path.write_text(json.dumps(identity))

    def drop(self) -> None:
        for path in (self.path, self.identity_path):
            path.unlink(missing_ok=True)


class DelegatedTokens:
    def __init__(
        self, ex: ExchangeConfig, cache: Path | TokenCacheStore, direct: bool = False
    ) -> None:
        self.ex = ex
        self.direct = direct
        self.scope = default_scope(ex, delegated=True)
        self.store: TokenCacheStore = FileTokenCache(cache) if isinstance(cache, Path) else cache
        self.name = cache.stem if isinstance(cache, Path) else str(getattr(cache, "name", ""))
        self._lock = threading.Lock()
        self._client: Any = None
        self._flows: dict[str, dict[str, Any]] = {}
        self._load()

    def _load(self) -> None:
        self._cache = msal.SerializableTokenCache()
        raw, recorded = self.store.load()
        if raw is not None:
            self._cache.deserialize(raw)
        self._drop_another_identity(recorded)
        self._client = None  # msal's app holds the cache it was built with

    def reload(self) -> None:
        """Read the cache again: this instance starts running the integration, and the cache
        it read before (for the admin's sign-in page, say) may be behind what the previous
        owner kept."""
        with self._lock:
            self._load()

    @property
    def identity(self) -> dict[str, str]:
        """Whose tokens the cache may hold: the app, where it gets them, and the account."""
        return {
            "client_id": self.ex.oauth_client_id,
            "token_endpoint": self.ex.oauth_token_endpoint,
            "username": self.ex.service_account_username.lower(),
        }

    def _drop_another_identity(self, recorded: dict[str, str] | None) -> None:
        """A cache belongs to one service account: when the config names another app or account,
        its tokens (which Exchange would accept for the old one) are dropped and the new account
        signs in (the sign_in_required alarm says so)."""
        if recorded is None:  # a cache from before identities were recorded: check its account
            wanted = self.identity["username"]
            names = {str(a.get("username", "")).lower() for a in _accounts(self._cache)}
            changed = bool(wanted and names and wanted not in names)
        else:
            changed = recorded != self.identity
        if changed:
            log.warning(
                "%s: the service account changed (%s): its cached sign-in is dropped; sign in "
                "again as %s",
                self.name,
                recorded or "another account",
                self.ex.service_account_username or "the new account",
            )
            self._cache = msal.SerializableTokenCache()
            # not this instance's to write (a shared database): its owner drops it
            with contextlib.suppress(OwnershipLostError):
                self.store.drop()

    @property
    def _app(self) -> Any:
        if self._client is None:
            self._client = _msal_app(self.ex, self._cache, self.direct)
        return self._client

    def _persist(self) -> None:
        if not self._cache.has_state_changed:
            return
        data = self._cache.serialize()  # marks the cache unchanged
        try:
            self.store.save(data, self.identity)
        except BaseException:
            self._cache.has_state_changed = True  # not kept: try again at the next change
            raise

    # --- the browser sign-in --------------------------------------------------------------
    def start_sign_in(self, redirect_uri: str) -> str:
        """Begin the authorization code flow; returns where to send the admin's browser: the
        configured authorization endpoint (msal's own, from the authority's OIDC document,
        when none is configured) with the flow's query (state, nonce, PKCE challenge)."""
        with self._lock:
            flow = self._app.initiate_auth_code_flow(
                scopes=[self.scope],
                redirect_uri=redirect_uri,
                login_hint=self.ex.service_account_username or None,
            )
            self._flows[flow["state"]] = flow
            return authorization_url(self.ex.oauth_authorization_endpoint, str(flow["auth_uri"]))

    def take_flow(self, state: str) -> dict[str, Any] | None:
        """The flow `start_sign_in` began under `state`, no longer kept here (the service keeps
        it where every instance finds it: the callback may reach another one)."""
        with self._lock:
            return self._flows.pop(state, None)

    def finish_sign_in(self, query: dict[str, str], flow: dict[str, Any] | None = None) -> str:
        """Complete the flow (the one begun here under the query's state, unless given) with
        the redirect's query; returns the signed-in account."""
        with self._lock:
            if flow is None:
                flow = self._flows.pop(query.get("state", ""), None)
            if flow is None:
                raise SignInRequired("unknown or expired sign-in attempt; start again")
            try:
                result = self._app.acquire_token_by_auth_code_flow(flow, query)
            except (RuntimeError, *IDENTITY_ERRORS) as exc:
                raise SignInRequired(f"sign-in failed: {exc}") from exc  # state, nonce, network
            _token(result, "authorization code grant")
            self._persist()
            claims = result.get("id_token_claims") or {}
            return str(claims.get("preferred_username") or self.ex.service_account_username)

    def get(self, force: bool = False) -> str:
        with self._lock:
            accounts = self._app.get_accounts()
            wanted = self.identity["username"]
            if wanted:  # the configured account's tokens, never another's left in the cache
                accounts = [a for a in accounts if str(a.get("username", "")).lower() == wanted]
            if not accounts:
                raise SignInRequired("the service account has not signed in yet")
            try:
                result = self._app.acquire_token_silent_with_error(
                    [self.scope], account=accounts[0], force_refresh=force
                )
            except IDENTITY_ERRORS as exc:  # an outage, not a refresh token refused
                raise identity_failure(exc, "token endpoint unreachable") from exc
            self._persist()
            if not result or "access_token" not in result:
                detail = (result or {}).get("error_description", "refresh failed")
                raise SignInRequired(f"the service account must sign in again: {detail}")
            return str(result["access_token"])


def _accounts(cache: Any) -> list[dict[str, Any]]:
    """The accounts a token cache holds (what msal's get_accounts reads), without an app."""
    found: list[dict[str, Any]] = cache.find(msal.TokenCache.CredentialType.ACCOUNT)
    return found


def token_source(
    ex: ExchangeConfig,
    data_dir: Path,
    name: str,
    direct: bool = False,
    caches: Callable[[str], TokenCacheStore] | None = None,
) -> TokenSource | None:
    """The integration's OAuth tokens; `direct`: its web proxy is turned off; `caches`: where
    a delegated cache is kept (files under data_dir unless given)."""
    if ex.authentication == "oauth_app":
        return AppTokens(ex, direct)
    if ex.authentication == "oauth_delegated":
        cache = caches(name) if caches is not None else DataLayout(data_dir).oauth(name)
        return DelegatedTokens(ex, cache, direct)
    return None
