"""Who is asking, and the sign-ins that tell: the add-in's bearer tokens (verified per
integration), the user sign-in of personal VMRs and of the organizer page (one client, one set
of sessions, two callbacks), the admins' OpenID Connect sign-in, and the service account's
delegated sign-in for Exchange (exchange.authentication = oauth_delegated).

The verifiers, sessions and HTTP clients are built on first use and follow each integration's
config across reloads (PerConfig): a front end that never signs anyone in pays for none of it.

The sessions (the user sign-in's and the admins' console sessions) and the attempts in progress
are kept where the runtime's stores say (ctx.stores): files and memory with one instance, the
shared database with several, where a session opened through one instance is accepted by every
other and a callback may reach any of them. A store that is a database is only ever called from
a worker thread (asyncio.to_thread), never on the event loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

import aiohttp

from vmrsched.config import AdminSignInConfig, IntegrationConfig, PerConfig
from vmrsched.errors import BadRequest, Forbidden, Unavailable, UpstreamError
from vmrsched.mailbox.base import GatewayError
from vmrsched.mailbox.ews_auth import SIGN_IN_ALARM, DelegatedTokens
from vmrsched.mailbox.sessions import CaSession
from vmrsched.proxies import use_rule
from vmrsched.service.runtime import Runtime
from vmrsched.signin import admins, identity, oidc, users
from vmrsched.store import OwnershipLostError

DELEGATED = "ews:"  # the context of a service account's sign-in attempt: "ews:<integration>"


class SignInRefused(BadRequest):
    """The identity provider's answer to a sign-in cannot be used (`integration`: whose)."""

    default_code = "sign_in_refused"

    def __init__(self, message: str, integration: str = "") -> None:
        super().__init__(message)
        self.integration = integration


def organizer_page_path(integ: IntegrationConfig) -> str:
    return f"/my/{integ.name}"


class SignIns:
    """Token verification and every sign-in the service offers."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._verifiers: PerConfig[identity.Verifier] | None = None
        self._user_sign_in: users.UserSignIn | None = None
        self._admin_sign_in: admins.AdminSignIn | None = None

    # --- add-in tokens ----------------------------------------------------------------------

    def use_http_client(self, session: Callable[[], aiohttp.ClientSession]) -> None:
        """The HTTP client token verifiers fetch signing keys with: the front end's own, on
        its event loop."""
        runtime = self.runtime
        self._verifiers = PerConfig(
            lambda integ: identity.verifier_for(integ, runtime.config.server.base_url, session)
        )

    async def verify_addin_token(
        self, integ: IntegrationConfig, token: str | None
    ) -> identity.Identity:
        """Who sent an add-in request, from its bearer token (TokenError, an Unauthorized,
        otherwise). The verifier follows the integration's config across reloads."""
        if self._verifiers is None:
            raise Unavailable("token verification is not set up", "unavailable")
        return await self._verifiers(integ).verify(token)

    async def personal_identity(
        self, integ: IntegrationConfig, token: str | None
    ) -> identity.Identity:
        """Who asks for personal VMRs: a session of the explicit sign-in (its token starts
        `vms1.`), else the host's add-in token as for every add-in request."""
        if token is None or not token.startswith(users.TOKEN_PREFIX):
            return await self.verify_addin_token(integ, token)
        sessions = self.user_sessions()
        if self._sessions_block() or sessions.needs_refresh(integ, token):
            email = await asyncio.to_thread(sessions.email, integ, token)
        else:
            email = sessions.email(integ, token)
        return identity.Identity(f"session:{email}", email, kind="session")

    async def session_user(self, integ: IntegrationConfig, token: str) -> str:
        """The add-in's name for a session's user (users.Session.user), "" if unknown."""
        sessions = self.user_sessions()
        if self._sessions_block():
            return await asyncio.to_thread(sessions.user, integ, token)
        return sessions.user(integ, token)

    def _sessions_block(self) -> bool:
        """Whether a session lookup may wait on something (a database): only in a worker
        thread then. The files are read once and looked up in memory."""
        return not isinstance(self.runtime.ctx.stores.user_sessions, users.FileSessions)

    # --- the user sign-in (personal VMRs and the organizer page) -------------------------------

    def user_sessions(self) -> users.UserSignIn:
        if self._user_sign_in is None:
            base = self.runtime.base_dir

            def session(integ: IntegrationConfig) -> CaSession:
                ca = integ.personal.tls_ca_file
                made = CaSession(str(base / ca) if ca else "")
                use_rule(made, integ.advanced.disable_web_proxy)  # one proxy rule for all calls
                return made

            stores = self.runtime.ctx.stores
            self._user_sign_in = users.UserSignIn(
                self.runtime.config.data_dir,
                http_for=PerConfig(session),
                store=stores.user_sessions,
                attempts=stores.attempts,
            )
        return self._user_sign_in

    def _sign_in_integration(self, name: str) -> IntegrationConfig:
        integ = self.runtime.integration(name)
        if not integ.enable_personal_vmrs or not integ.personal.sign_in:
            raise Forbidden(
                f"{integ.name} has no personal VMR sign-in configured", "feature_disabled"
            )
        return integ

    def personal_redirect_uri(self, integ: IntegrationConfig) -> str:
        return f"{self.runtime.config.server.base_url}/addin/{integ.name}/sign-in/callback"

    def start_personal_sign_in(self, name: str) -> str:
        """Where the pane's sign-in dialog goes (the provider's authorization URL)."""
        integ = self._sign_in_integration(name)
        return self.user_sessions().start(integ, self.personal_redirect_uri(integ))

    async def finish_personal_sign_in(self, name: str, query: dict[str, str]) -> users.Session:
        """The provider redirected back: state and PKCE checked, code redeemed, session made
        (users.SignInRefused, a BadRequest, otherwise)."""
        integ = self._sign_in_integration(name)
        return await asyncio.to_thread(
            self.user_sessions().finish, integ, query, self.personal_redirect_uri(integ)
        )

    async def personal_sign_out(self, name: str, token: str | None) -> None:
        integ = self.runtime.integration(name)
        if token and token.startswith(users.TOKEN_PREFIX):
            await asyncio.to_thread(self.user_sessions().sign_out, integ, token)

    def organizer_redirect_uri(self, integ: IntegrationConfig) -> str:
        base = self.runtime.config.server.base_url
        return f"{base}{organizer_page_path(integ)}/sign-in/callback"

    def organizer_sign_in_available(self, integ: IntegrationConfig) -> bool:
        return bool(integ.personal.sign_in)

    def _organizer_sign_in_integration(self, name: str) -> IntegrationConfig:
        integ = self.runtime.integration(name)
        if not self.organizer_sign_in_available(integ):
            raise Forbidden(f"{integ.name} has no user sign-in configured", "feature_disabled")
        return integ

    def start_organizer_sign_in(self, name: str) -> str:
        """The personal-VMR sign-in (same client, same sessions) for the organizer page: the
        provider sends the browser back to the page's own callback."""
        integ = self._organizer_sign_in_integration(name)
        return self.user_sessions().start(integ, self.organizer_redirect_uri(integ))

    async def finish_organizer_sign_in(self, name: str, query: dict[str, str]) -> users.Session:
        integ = self._organizer_sign_in_integration(name)
        return await asyncio.to_thread(
            self.user_sessions().finish, integ, query, self.organizer_redirect_uri(integ)
        )

    # --- the admins' sign-in --------------------------------------------------------------------

    def admin_sign_in_enabled(self) -> bool:
        return self.runtime.config.server.admin_sign_in.enabled

    def admin_redirect_uri(self) -> str:
        return f"{self.runtime.config.server.base_url}/admin/sign-in/callback"

    def _admin_sign_ins(self) -> admins.AdminSignIn:
        if not self.admin_sign_in_enabled():
            raise Forbidden("no admin sign-in is configured", "feature_disabled")
        if self._admin_sign_in is None:
            base = self.runtime.base_dir
            sessions: dict[str, CaSession] = {}

            def session(cfg: AdminSignInConfig) -> CaSession:
                ca = str(base / cfg.tls_ca_file) if cfg.tls_ca_file else ""
                return sessions.setdefault(ca, CaSession(ca))

            self._admin_sign_in = admins.AdminSignIn(
                session, attempts=self.runtime.ctx.stores.attempts
            )
        return self._admin_sign_in

    def start_admin_sign_in(self) -> str:
        """Where an admin's browser goes to sign in (the provider's authorization URL)."""
        return self._admin_sign_ins().start(
            self.runtime.config.server.admin_sign_in, self.admin_redirect_uri()
        )

    async def finish_admin_sign_in(self, query: dict[str, str]) -> str:
        """Who signed in, when a member of the admin group (SignInRefused, a BadRequest, for
        a bad answer; admins.NotAnAdmin, a Forbidden, for anyone else)."""
        sign_ins = self._admin_sign_ins()
        return await asyncio.to_thread(
            sign_ins.finish,
            self.runtime.config.server.admin_sign_in,
            query,
            self.admin_redirect_uri(),
        )

    # --- the admins' console sessions ------------------------------------------------------------
    # Kept in this process's memory with one instance, in the shared database with several: a
    # console session opened through one instance is accepted by every other. Each call runs in
    # a worker thread (the store may be a database).

    @property
    def admin_sessions(self) -> admins.AdminSessions:
        return self.runtime.ctx.stores.admin_sessions

    async def open_admin_session(self, who: str) -> str:
        """A console session for `who` (signed in, or holding the admin token): its id."""
        return await asyncio.to_thread(self.admin_sessions.create, who)

    async def admin_session(self, sid: str) -> str | None:
        """Who opened the console session `sid`, while it lives (None otherwise)."""
        if not sid:
            return None
        return await asyncio.to_thread(self.admin_sessions.who, sid)

    async def end_admin_session(self, sid: str) -> None:
        if sid:
            await asyncio.to_thread(self.admin_sessions.end, sid)

    async def admin_csrf(self, sid: str) -> str:
        """The CSRF token every change made with the session's cookie must carry."""
        return await asyncio.to_thread(self.admin_sessions.csrf, sid)

    # --- the service account's delegated sign-in -------------------------------------------------

    def _delegated(self, integ: IntegrationConfig) -> DelegatedTokens | None:
        source = self.runtime.ctx.tokens.get(integ)
        return source if isinstance(source, DelegatedTokens) else None

    async def start_sign_in(self, name: str) -> str:
        """The identity provider's URL where the service account signs in (oauth_delegated).
        The attempt is kept where every instance finds it (the callback may reach another)."""
        integ = self.runtime.integration(name)
        tokens = self._delegated(integ)
        if tokens is None:
            raise BadRequest(
                f"{integ.name} does not use exchange.authentication = oauth_delegated",
                "not_delegated",
            )
        attempts = self.runtime.ctx.stores.attempts

        def start() -> str:
            url = tokens.start_sign_in(integ.exchange.oauth_redirect_uri)
            state = parse_qs(urlsplit(url).query).get("state", [""])[0]
            flow = tokens.take_flow(state)
            if flow is not None:
                verifier, nonce = str(flow.get("code_verifier", "")), str(flow.get("nonce", ""))
                made = oidc.Attempt(DELEGATED + integ.name, verifier, nonce, time.time(), flow)
                attempts.put(state, made)
            return url

        try:
            return await asyncio.to_thread(start)
        except GatewayError as exc:
            raise UpstreamError(str(exc), "identity_provider_unreachable") from exc

    async def service_account_sign_in_of(self, state: str) -> str | None:
        """The integration whose service-account sign-in `state` belongs to (left in place),
        or None: for passing a callback on to the instance that runs that integration."""
        context = await asyncio.to_thread(self.runtime.ctx.stores.attempts.context, state)
        return (
            context.removeprefix(DELEGATED) if context and context.startswith(DELEGATED) else None
        )

    async def finish_sign_in(self, query: dict[str, str]) -> tuple[str, str]:
        """Complete the sign-in the identity provider redirected back from: (integration,
        account). BadRequest for an unknown or expired attempt or a refused code; Unavailable
        where the integration runs on another instance (its token cache is the owner's)."""
        state = query.get("state", "")
        attempt = (
            await asyncio.to_thread(self.runtime.ctx.stores.attempts.take, state) if state else None
        )
        fresh = attempt is not None and time.time() - attempt.created <= oidc.PENDING_SECONDS
        integ = None
        if attempt is not None and fresh and attempt.context.startswith(DELEGATED):
            integ = self.runtime.config.integration(attempt.context.removeprefix(DELEGATED))
        tokens = self._delegated(integ) if integ is not None else None
        if attempt is None or integ is None or tokens is None:
            raise SignInRefused("unknown or expired sign-in attempt; start again")
        flow = dict(attempt.flow) if attempt.flow is not None else None
        try:
            account = await asyncio.to_thread(tokens.finish_sign_in, query, flow)
        except GatewayError as exc:
            raise SignInRefused(str(exc), integ.name) from exc
        except OwnershipLostError as exc:
            # the token cache is its owner's to write (a shared database): sign in there
            raise Unavailable(
                f"{integ.name} runs on another instance: sign the service account in "
                "through that instance's admin pages",
                "integration_elsewhere",
            ) from exc
        self.runtime.ctx.alarms.clear(integ.name, SIGN_IN_ALARM)
        return integ.name, account
