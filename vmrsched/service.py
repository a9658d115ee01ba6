"""The one facade the front ends (http/, cli.py) use: start and stop the actor tree, reload,
reserve aliases, readiness, admin actions, and the offline tools (check online, recover).
Front ends import this module and core modules, never an actor or a gateway, so what an actor
or a backend looks like can change without touching them."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pykka
import requests

from vmrsched import (
    admin_sign_in,
    alias_admin,
    answers,
    decisions,
    directory,
    identity,
    recurrence,
    user_sign_in,
)
from vmrsched import config as config_mod
from vmrsched.actors.allocator import QuotaReached
from vmrsched.actors.bridge import ReservationBatcher, ask_async
from vmrsched.actors.context import Context
from vmrsched.actors.messages import (
    DeleteAlias,
    FindAliases,
    Flush,
    Poll,
    Reload,
    ResendInstructions,
)
from vmrsched.actors.notifier import _notice_id as notice_id
from vmrsched.actors.registry import ActorUnavailable
from vmrsched.actors.service import ReloadResult, ServiceSupervisor, supervisor_proxy
from vmrsched.config import Config, IntegrationConfig, PerConfig
from vmrsched.errors import (
    BadRequest,
    Forbidden,
    NotFound,
    QuotaExceeded,
    Unauthorized,
    Unavailable,
    UpstreamError,
)
from vmrsched.mailbox.backends import make_gateway
from vmrsched.mailbox.base import GatewayError
from vmrsched.mailbox.ews_auth import SIGN_IN_ALARM, DelegatedTokens
from vmrsched.mailbox.graph import GraphMailbox
from vmrsched.mailbox.sessions import CaSession
from vmrsched.meetings import is_address
from vmrsched.outgoing import Outgoing
from vmrsched.outqueue import Failed, OutQueue, Queued, read_contents
from vmrsched.pexip import policy
from vmrsched.pexip.management import ManagementClient, PexipRefused, PexipUnavailable
from vmrsched.proxies import use_rule
from vmrsched.recovery import Recovered, recover
from vmrsched.store import Record, Store, decode_schedule, lock_directory
from vmrsched.telemetry import (
    CONFIG_INVALID,
    DELIVERY_FAILED,
    NOT_READY,
    Alarm,
    Alarms,
    Metrics,
    PolicyActivity,
)
from vmrsched.templating import Renderer, plain_text

__all__ = [
    "OfflineAdmin",
    "Recovered",
    "ReloadResult",
    "Service",
    "SignInRefused",
    "check_online",
    "recover_integration",
    "start",
]

log = logging.getLogger("vmrsched.service")


class SignInRefused(BadRequest):
    """The identity provider's answer to a sign-in cannot be used (`integration`: whose)."""

    default_code = "sign_in_refused"

    def __init__(self, message: str, integration: str = "") -> None:
        super().__init__(message)
        self.integration = integration


THREAD_STACK = 512 * 1024  # hundreds of integrations x 3 children must fit
PERSONAL_REFRESH = 5.0  # seconds between looks at the personal directory files


@dataclass
class Service:
    config: Config
    ctx: Context
    supervisor: pykka.ActorRef[ServiceSupervisor]
    lock_fd: int = -1  # the data directory's lock, held while the service runs
    _batchers: dict[str, ReservationBatcher] = field(default_factory=dict)
    _verifiers: PerConfig[identity.Verifier] | None = None
    _directories: PerConfig[directory.Directory] | None = None
    _renderers: PerConfig[Any] = field(default_factory=lambda: PerConfig(lambda i: i.renderer()))
    _rendered: dict[tuple[int, Any], tuple[IntegrationConfig, dict[str, Any]]] = field(
        default_factory=dict
    )
    _user_sign_in: user_sign_in.UserSignIn | None = None
    _admin_sign_in: admin_sign_in.AdminSignIn | None = None
    started_at: float = field(default_factory=time.time)
    policy_activity: PolicyActivity = field(default_factory=PolicyActivity)
    _personal_served: set[str] = field(default_factory=set)

    def use_http_client(self, session: Callable[[], aiohttp.ClientSession]) -> None:
        """The HTTP client token verifiers fetch signing keys with: the front end's own, on
        its event loop."""
        self._verifiers = PerConfig(
            lambda integ: identity.verifier_for(integ, self.config.server.base_url, session)
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
        if token is None or not token.startswith(user_sign_in.TOKEN_PREFIX):
            return await self.verify_addin_token(integ, token)
        sessions = self.user_sessions()
        if sessions.needs_refresh(integ, token):
            email = await asyncio.to_thread(sessions.email, integ, token)
        else:
            email = sessions.email(integ, token)
        return identity.Identity(f"session:{email}", email, kind="session")

    def user_sessions(self) -> user_sign_in.UserSignIn:
        if self._user_sign_in is None:
            base = self.config.path.parent if self.config.path else Path(".")

            def session(integ: IntegrationConfig) -> CaSession:
                ca = integ.personal.tls_ca_file
                made = CaSession(str(base / ca) if ca else "")
                use_rule(made, integ.advanced.disable_web_proxy)  # one proxy rule for all calls
                return made

            self._user_sign_in = user_sign_in.UserSignIn(
                self.config.data_dir, http_for=PerConfig(session)
            )
        return self._user_sign_in

    def _sign_in_integration(self, name: str) -> IntegrationConfig:
        integ = self.integration(name)
        if not integ.enable_personal_vmrs or not integ.personal.sign_in:
            raise Forbidden(
                f"{integ.name} has no personal VMR sign-in configured", "feature_disabled"
            )
        return integ

    def personal_redirect_uri(self, integ: IntegrationConfig) -> str:
        return f"{self.config.server.base_url}/addin/{integ.name}/sign-in/callback"

    def start_personal_sign_in(self, name: str) -> str:
        """Where the pane's sign-in dialog goes (the provider's authorization URL)."""
        integ = self._sign_in_integration(name)
        return self.user_sessions().start(integ, self.personal_redirect_uri(integ))

    async def finish_personal_sign_in(
        self, name: str, query: dict[str, str]
    ) -> user_sign_in.Session:
        """The provider redirected back: state and PKCE checked, code redeemed, session made
        (user_sign_in.SignInRefused, a BadRequest, otherwise)."""
        integ = self._sign_in_integration(name)
        return await asyncio.to_thread(
            self.user_sessions().finish, integ, query, self.personal_redirect_uri(integ)
        )

    async def personal_sign_out(self, name: str, token: str | None) -> None:
        integ = self.integration(name)
        if token and token.startswith(user_sign_in.TOKEN_PREFIX):
            await asyncio.to_thread(self.user_sessions().sign_out, integ, token)

    def admin_sign_in_enabled(self) -> bool:
        return self.config.server.admin_sign_in.enabled

    def admin_redirect_uri(self) -> str:
        return f"{self.config.server.base_url}/admin/sign-in/callback"

    def _admin_sign_ins(self) -> admin_sign_in.AdminSignIn:
        if not self.admin_sign_in_enabled():
            raise Forbidden("no admin sign-in is configured", "feature_disabled")
        if self._admin_sign_in is None:
            base = self.config.path.parent if self.config.path else Path(".")
            sessions: dict[str, CaSession] = {}

            def session(cfg: config_mod.AdminSignInConfig) -> CaSession:
                ca = str(base / cfg.tls_ca_file) if cfg.tls_ca_file else ""
                return sessions.setdefault(ca, CaSession(ca))

            self._admin_sign_in = admin_sign_in.AdminSignIn(session)
        return self._admin_sign_in

    def start_admin_sign_in(self) -> str:
        """Where an admin's browser goes to sign in (the provider's authorization URL)."""
        return self._admin_sign_ins().start(
            self.config.server.admin_sign_in, self.admin_redirect_uri()
        )

    async def finish_admin_sign_in(self, query: dict[str, str]) -> str:
        """Who signed in, when a member of the admin group (SignInRefused, a BadRequest, for
        a bad answer; admin_sign_in.NotAnAdmin, a Forbidden, for anyone else)."""
        sign_ins = self._admin_sign_ins()
        return await asyncio.to_thread(
            sign_ins.finish, self.config.server.admin_sign_in, query, self.admin_redirect_uri()
        )

    def _load_for_reload(self, path: Path | None) -> Config | None:
        source = path or self.config.path
        if source is None:
            raise ValueError("no config file to reload from")
        try:
            new = config_mod.load(source)
        except config_mod.ConfigError as exc:
            for problem in exc.problems:
                log.error("config reload refused: %s", problem)
            self.ctx.alarms.raise_("service", CONFIG_INVALID, "; ".join(exc.problems))
            self.ctx.metrics.config_reloads.labels("invalid").inc()
            return None
        self.ctx.alarms.clear("service", CONFIG_INVALID)
        return new

    def reload(self, path: Path | None = None) -> ReloadResult | None:
        """Re-read the config file and apply it. An invalid file keeps the old config running,
        logs every problem and raises the `config_invalid` alarm. Blocking: not for the loop."""
        new = self._load_for_reload(path)
        if new is None:
            return None
        result: ReloadResult = supervisor_proxy(self.supervisor).reload(new).get(timeout=300)
        return self._applied(new, result)

    async def reload_async(self, path: Path | None = None) -> ReloadResult | None:
        """`reload` for the event loop: the file is read in a worker thread and the supervisor
        answers through a future (bridge.ask_async)."""
        new = await asyncio.to_thread(self._load_for_reload, path)
        if new is None:
            return None
        result: ReloadResult = await ask_async(self.supervisor, Reload(new), timeout=300)
        return self._applied(new, result)

    def _applied(self, new: Config, result: ReloadResult) -> ReloadResult:
        self.config = new
        self.ctx.metrics.config_reloads.labels("applied").inc()
        log.info(
            "config reloaded: changed=%s added=%s removed=%s",
            result.changed,
            result.added,
            result.removed,
        )
        return result

    def integration_names(self) -> list[str]:
        return [i.name for i in self.config.integrations]

    @property
    def metrics(self) -> Metrics:
        return self.ctx.metrics

    def integration(self, name: str) -> IntegrationConfig:
        integ = self.config.integration(name)
        if integ is None:
            raise NotFound("unknown integration", "unknown_integration")
        return integ

    async def reserve(
        self, name: str, timeout: float, who: identity.Identity | None = None
    ) -> Record:
        """Reserve one single-use alias for `who`, durable before it returns. Reservations
        arriving in the same event-loop turn share one message and one fsync
        (ReservationBatcher). A verified user holding the integration's cap of open
        reservations gets QuotaExceeded; unverified callers (token validation "none": every
        one of them is "anonymous", on loopback only) are not capped."""
        state = self.ctx.status.state(name)
        user = who.user if who is not None and who.kind != "none" else ""
        try:
            if state != "running":
                raise ActorUnavailable(f"integration {name} is {state or 'not running'}")
            allocator = self.ctx.registry.get(name, "allocator")
            batcher = self._batchers.get(name)
            if batcher is None:
                batcher = self._batchers[name] = ReservationBatcher()
            record: Record = await batcher.reserve(allocator, timeout, user)
        except (ActorUnavailable, TimeoutError) as exc:
            raise Unavailable("the booking service cannot take requests right now") from exc
        except QuotaReached as exc:
            raise self._quota_exceeded(name, exc) from exc
        return record

    def _quota_exceeded(self, name: str, reached: QuotaReached) -> QuotaExceeded:
        """What a user at the cap is told: how many they hold, and how slots come free."""
        integ = self.config.integration(name)
        days = integ.reservation_ttl_days if integ is not None else 30
        return QuotaExceeded(
            f"You have {reached.held} video rooms reserved that are not in a meeting yet, the "
            f"most one person may hold ({reached.cap}). Use one of them in a meeting, or wait: "
            f"unused reservations expire {days} days after they were made, and an "
            "administrator can release them sooner."
        )

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Whether every integration runs with a sound store, and the state of each."""
        states = self.ctx.status.snapshot()
        integrations = {
            name: {
                "state": states.get(name, {}).get("state", "starting"),
                "restarts": states.get(name, {}).get("restarts", 0),
                "error": states.get(name, {}).get("error", ""),
                "alarms": [a.name for a in self.ctx.alarms.active(name)],
            }
            for name in self.integration_names()
        }
        ready = bool(integrations) and all(
            i["state"] == "running" and not NOT_READY.intersection(i["alarms"])
            for i in integrations.values()
        )
        body = {
            "status": "ready" if ready else "not_ready",
            "integrations": integrations,
            "alarms": [a.name for a in self.ctx.alarms.active("service")],
        }
        return ready, body

    async def personal_vmrs(
        self, integ: IntegrationConfig, who: identity.Identity, demo_user: str = ""
    ) -> list[dict[str, Any]]:
        """The signed-in user's personal VMRs, rendered with the personal templates.
        Forbidden when personal VMRs are off; Unauthorized (sign_in_required) when the token
        names no email; NotFound (user_unknown); Unavailable (directory_unavailable)."""
        if not integ.enable_personal_vmrs:
            raise Forbidden("personal VMRs are not enabled", "feature_disabled")
        email = who.email or (demo_user if who.kind == "none" else "")
        if not email:
            raise Unauthorized(
                plain_text(integ.addin.error_signing_in_message)
                + " (the add-in token does not name the user's email)",
                "sign_in_required",
            )
        source = self._directory(integ)
        try:
            vmrs = source.peek(email)
            if vmrs is None:
                vmrs = await asyncio.to_thread(source.vmrs_of, email)
        except directory.UserUnknown as exc:
            raise NotFound(
                plain_text(integ.addin.error_getting_personal_vmrs_message), "user_unknown"
            ) from exc
        except directory.DirectoryUnavailable as exc:
            log.warning("personal VMRs of %s: %s", email, exc, extra={"integration": integ.name})
            raise Unavailable(
                plain_text(integ.addin.error_getting_personal_vmrs_message),
                "directory_unavailable",
            ) from exc
        return [self._rendered_vmr(integ, vmr) for vmr in vmrs]

    def _rendered_vmr(self, integ: IntegrationConfig, vmr: directory.PersonalVmr) -> dict[str, Any]:
        """A VMR rendered with the integration's personal templates, remembered (the same VMR
        and config render the same; a reload brings a new config object, a changed VMR is a
        new key)."""
        key = (id(integ), vmr)
        done = self._rendered.get(key)
        if done is not None and done[0] is integ:
            return done[1]
        renderer = self._renderers(integ)
        values = directory.template_values(vmr, answers.joining_domain(integ))
        rendered = {
            "name": renderer.render("name_template", values),
            "description": renderer.render("description_template", values),
            "joining_instructions": renderer.render("joining_instructions_template", values),
            "location": renderer.render("location_template", values),
            "aliases": list(vmr.aliases),
        }
        if len(self._rendered) >= 50_000:
            self._rendered.clear()
        self._rendered[key] = (integ, rendered)
        return rendered

    def _directory(self, integ: IntegrationConfig) -> directory.Directory:
        if self._directories is None:
            base = self.config.path.parent if self.config.path else Path(".")
            self._directories = PerConfig(lambda i: directory.directory_for(i, base))
        return self._directories(integ)

    def refresh_personal(self) -> None:
        """The personal VMRs of file directories to the policy index, so that a node asking
        for one gets its settings (a node cannot route a room its own database lacks); the
        file is read again only when it changed. Rooms of the `pexip` source live on Pexip:
        the node finds them there. Runs again every PERSONAL_REFRESH seconds."""
        try:
            served = set()
            for integ in self.config.integrations:
                if not integ.enable_personal_vmrs or integ.personal.source != "file":
                    continue
                served.add(integ.name)
                source = self._directory(integ)
                try:
                    vmrs = source.rooms() if isinstance(source, directory.FileDirectory) else None
                except directory.DirectoryUnavailable as exc:
                    log.warning("personal VMRs: %s", exc, extra={"integration": integ.name})
                    continue
                if vmrs is not None:
                    self.ctx.alias_index.publish_personal(
                        integ.name, (directory.policy_room(integ.name, v) for v in vmrs)
                    )
            for name in self._personal_served - served:
                self.ctx.alias_index.publish_personal(name, ())
            self._personal_served = served
        finally:
            self.ctx.scheduler.call_later(PERSONAL_REFRESH, self.refresh_personal)

    def policy_answer(self, local_alias: str) -> tuple[str, dict[str, Any]]:
        """What a Pexip node gets for a dialled alias: (result label, JSON answer). Reads the
        published alias index only; never waits on an actor."""
        result, answer = policy.answer(local_alias, self.ctx.clock(), self.ctx.alias_index)
        self.policy_activity.answered(result)
        if result == "rejected":
            self.policy_activity.rejected(local_alias, self._reject_reason(local_alias))
        return result, answer

    def _reject_reason(self, local_alias: str) -> str:
        """Why the policy endpoint rejected an alias, in words for the admin pages."""
        room = self.ctx.alias_index.lookup(policy.normalise(local_alias))
        if room is None:
            return "not one of ours"
        status = getattr(room, "status", "")
        if status != "bound" or getattr(room, "schedule", None) is None:
            return f"not booked for a meeting (it is {status or 'unknown'})"
        return "outside its join window (too early or too late to join)"

    def graph_validation(self, name: str) -> bool:
        """Whether `name` is a Graph integration expecting change notifications (only those
        echo Graph's validation token)."""
        integ = self.config.integration(name)
        return integ is not None and integ.backend == "graph" and bool(integ.graph.notification_url)

    def graph_notification(self, name: str, notifications: list[dict[str, Any]]) -> None:
        """Change or lifecycle notifications for a Graph integration: its gateway checks the
        clientState and notes what happened; the poller is told to look now. Never waits."""
        gateway = self.ctx.mailboxes.get(name)
        counter = self.ctx.metrics.graph_notifications
        if not isinstance(gateway, GraphMailbox):
            counter.labels(name[:64], "unknown").inc(len(notifications))
            return
        accepted, refused = gateway.notified(notifications)
        counter.labels(name, "accepted").inc(accepted)
        if refused:
            counter.labels(name, "refused").inc(refused)
            log.warning(
                "ignored %d Graph notifications with a wrong clientState",
                refused,
                extra={"integration": name},
            )
        if accepted:
            with contextlib.suppress(ActorUnavailable, pykka.ActorDeadError):
                self.ctx.registry.get(name, "poller").tell(Poll())

    def _delegated(self, integ: IntegrationConfig) -> DelegatedTokens | None:
        source = self.ctx.tokens.get(integ)
        return source if isinstance(source, DelegatedTokens) else None

    async def start_sign_in(self, name: str) -> str:
        """The identity provider's URL where the service account signs in (oauth_delegated)."""
        integ = self.integration(name)
        tokens = self._delegated(integ)
        if tokens is None:
            raise BadRequest(
                f"{integ.name} does not use exchange.authentication = oauth_delegated",
                "not_delegated",
            )
        try:
            return await asyncio.to_thread(tokens.start_sign_in, integ.exchange.oauth_redirect_uri)
        except GatewayError as exc:
            raise UpstreamError(str(exc), "identity_provider_unreachable") from exc

    async def finish_sign_in(self, query: dict[str, str]) -> tuple[str, str]:
        """Complete the sign-in the identity provider redirected back from: (integration,
        account). BadRequest for an unknown or expired attempt or a refused code."""
        for integ in self.config.integrations:
            tokens = self._delegated(integ)
            if tokens is None or query.get("state") not in tokens.pending_states():
                continue
            try:
                account = await asyncio.to_thread(tokens.finish_sign_in, query)
            except GatewayError as exc:
                raise SignInRefused(str(exc), integ.name) from exc
            self.ctx.alarms.clear(integ.name, SIGN_IN_ALARM)
            return integ.name, account
        raise SignInRefused("unknown or expired sign-in attempt; start again")

    # --- admin ------------------------------------------------------------------------------------

    def admin_overview(self) -> list[dict[str, Any]]:
        """Each integration with its state, alarms (since when, why) and mailbox lag (the
        incoming side: the oldest item of the last poll)."""
        states = self.ctx.status.snapshot()
        overview = []
        for integ in self.config.integrations:
            state = states.get(integ.name, {})
            lag = state.get("lag")
            overview.append(
                {
                    "name": integ.name,
                    "backend": integ.backend,
                    "timezone": integ.timezone,
                    "state": state.get("state", "starting"),
                    "restarts": state.get("restarts", 0),
                    "error": state.get("error", ""),
                    "mailbox_lag_seconds": lag,
                    "incoming_lag_seconds": lag,
                    "last_poll": _iso_or_none(state.get("polled")),
                    "alarms": [alarm_view(a) for a in self.ctx.alarms.active(integ.name)],
                }
            )
        return overview

    def admin_service(self) -> dict[str, Any]:
        """The service itself: version, since when it runs, its own alarms (config_invalid
        and the like: not any one integration's) and what the policy endpoint answered."""
        now = time.time()
        return {
            "version": _version(),
            "started": datetime.fromtimestamp(self.started_at, UTC).isoformat(),
            "uptime_seconds": round(now - self.started_at, 1),
            "alarms": [alarm_view(a) for a in self.ctx.alarms.active("service")],
            "policy": self.policy_activity.summary(),
        }

    async def admin_status(self) -> list[dict[str, Any]]:
        """admin_overview with each integration's outgoing side: how many messages are queued
        and failed, the age of the oldest queued one, and a mailbox lag that counts it (a reply
        that cannot be sent is lag too)."""
        overview = self.admin_overview()
        contents = await asyncio.gather(
            *(self._queue_contents(i["name"]) for i in overview), return_exceptions=True
        )
        now = time.time()
        for item, found in zip(overview, contents, strict=True):
            if isinstance(found, BaseException):
                log.warning("cannot read the queue of %s: %s", item["name"], found)
                item["outgoing"] = {"queued": None, "failed": None, "oldest_queued": None}
                continue
            queued, failed = found
            oldest = queued[0].at if queued else None
            outgoing_lag = round(max(0.0, now - oldest), 1) if oldest else 0.0
            item["outgoing"] = {
                "queued": len(queued),
                "failed": len(failed),
                "oldest_queued": _iso_or_none(oldest),
                "lag_seconds": outgoing_lag,
            }
            incoming = item["incoming_lag_seconds"]
            item["mailbox_lag_seconds"] = max(incoming or 0.0, outgoing_lag)
        return overview

    async def _queue_contents(self, name: str) -> tuple[list[Queued], list[Failed]]:
        """What the integration's notifier holds, asked in its thread when it runs; read from
        its journal (without writing) when it does not."""
        integ = self.integration(name)
        try:
            notifier = self.ctx.registry.get(name, "notifier")
        except ActorUnavailable:
            notifier = None
        if notifier is not None:
            with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout, AttributeError):
                found: tuple[list[Queued], list[Failed]] = await asyncio.to_thread(
                    lambda: notifier.proxy().queue.contents().get(timeout=10)
                )
                return found
        directory = config_mod.queue_dir(self.config.data_dir, integ.name)
        return await asyncio.to_thread(read_contents, directory)

    async def admin_messages(self, name: str, limit: int = 200) -> dict[str, Any]:
        """The integration's failed messages (newest first) and queued ones (oldest first)."""
        queued, failed = await self._queue_contents(name)
        return {
            "failed": [
                message_view(f.message, "failed", f.at, f.reason)
                for f in sorted(failed, key=lambda f: f.at, reverse=True)[:limit]
            ],
            "queued": [message_view(q.message, "queued", q.at) for q in queued[:limit]],
        }

    async def _notifier_act(self, name: str, act: str, message_id: str, by: str) -> None:
        """Retry or discard one message in the notifier's own thread (it owns the queue)."""
        self.integration(name)
        try:
            if self.ctx.status.state(name) != "running":
                raise ActorUnavailable(name)
            notifier = self.ctx.registry.get(name, "notifier")

            def run() -> tuple[bool, list[Failed]]:
                queue = notifier.proxy().queue
                done = bool(getattr(queue, act)(message_id).get(timeout=30))
                return done, queue.contents().get(timeout=30)[1]

            done, failed = await asyncio.to_thread(run)
        except (ActorUnavailable, pykka.ActorDeadError, pykka.Timeout) as exc:
            raise Unavailable(f"integration {name} cannot take requests right now") from exc
        if not done:
            what = "failed message" if act == "retry" else "failed or queued message"
            raise NotFound(f"no {what} {message_id} in {name}", "unknown_message")
        log.warning(
            "message %s of %s %s by %s",
            message_id,
            name,
            "put back in the queue" if act == "retry" else "discarded",
            by,
            extra={"integration": name, "message_id": message_id},
        )
        if act == "retry":
            notifier.tell(Flush())
        # the alarm stays while a failed message still needs an admin (a failed organizer
        # update whose joining instructions went out by mail does not)
        gone = {f.message.id for f in failed}
        if not any(f.message.kind != "update" or notice_id(f.message) in gone for f in failed):
            self.ctx.alarms.clear(name, DELIVERY_FAILED)

    async def admin_retry_message(self, name: str, message_id: str, by: str) -> None:
        await self._notifier_act(name, "retry", message_id, by)

    async def admin_discard_message(self, name: str, message_id: str, by: str) -> None:
        await self._notifier_act(name, "discard", message_id, by)

    async def admin_decisions(self, name: str, query: str, limit: int) -> list[dict[str, Any]]:
        integ = self.integration(name)
        path = decisions.log_path(self.config.data_dir, integ.name)
        view = decision_view(integ, self._renderers(integ))
        return await asyncio.to_thread(decisions.search, path, query, limit, view)

    async def _ask_allocator(self, name: str, payload: Any) -> Any:
        self.integration(name)
        state = self.ctx.status.state(name)
        try:
            if state != "running":
                raise ActorUnavailable(f"integration {name} is {state or 'not running'}")
            allocator = self.ctx.registry.get(name, "allocator")
            return await ask_async(allocator, payload, timeout=60)
        except (ActorUnavailable, TimeoutError) as exc:
            raise Unavailable(f"integration {name} cannot take requests right now") from exc

    async def admin_find_aliases(
        self, name: str, query: str = "", day: str = "", limit: int = 100
    ) -> list[dict[str, Any]]:
        """Conferences and reservations matching `query` (and touching `day`), with windows."""
        if day:
            try:
                date.fromisoformat(day)
            except ValueError as exc:
                raise BadRequest("day must be YYYY-MM-DD", "bad_day") from exc
        integ = self.integration(name)
        found = await self._ask_allocator(name, FindAliases(query, day, max(1, min(limit, 1000))))
        now = self.ctx.clock()
        renderer = self._renderers(integ)
        return [admin_view(integ, record, now, renderer) for record in found]

    async def admin_delete_alias(self, name: str, alias: str, by: str) -> dict[str, Any]:
        integ = self.integration(name)
        record = await self._ask_allocator(name, DeleteAlias(alias, by))
        if record is None:
            raise NotFound(f"no alias {alias} in {name}", "unknown_alias")
        return admin_view(integ, record, self.ctx.clock(), self._renderers(integ))

    async def admin_resend(self, name: str, alias: str, by: str) -> str:
        message_id = await self._ask_allocator(name, ResendInstructions(alias, by))
        if message_id is None:
            raise NotFound(
                f"{alias} is not booked for a meeting with an organizer in {name}", "not_booked"
            )
        return str(message_id)

    # --- organizer self-service (DESIGN "Organizer self-service") ----------------------------

    def organizer_page_path(self, integ: IntegrationConfig) -> str:
        return f"/my/{integ.name}"

    def organizer_redirect_uri(self, integ: IntegrationConfig) -> str:
        return f"{self.config.server.base_url}{self.organizer_page_path(integ)}/sign-in/callback"

    def organizer_sign_in_available(self, integ: IntegrationConfig) -> bool:
        return bool(integ.personal.sign_in)

    def _organizer_sign_in_integration(self, name: str) -> IntegrationConfig:
        integ = self.integration(name)
        if not self.organizer_sign_in_available(integ):
            raise Forbidden(f"{integ.name} has no user sign-in configured", "feature_disabled")
        return integ

    def start_organizer_sign_in(self, name: str) -> str:
        """The personal-VMR sign-in (same client, same sessions) for the organizer page: the
        provider sends the browser back to the page's own callback."""
        integ = self._organizer_sign_in_integration(name)
        return self.user_sessions().start(integ, self.organizer_redirect_uri(integ))

    async def finish_organizer_sign_in(
        self, name: str, query: dict[str, str]
    ) -> user_sign_in.Session:
        integ = self._organizer_sign_in_integration(name)
        session = await asyncio.to_thread(
            self.user_sessions().finish, integ, query, self.organizer_redirect_uri(integ)
        )
        log.info(
            "%s signed in to the organizer page",
            session.email,
            extra={"integration": integ.name},
        )
        return session

    async def organizer(
        self, integ: IntegrationConfig, token: str | None, demo_user: str = ""
    ) -> Organizer:
        """Who asks on the organizer page or its API: a session of the user sign-in (a
        `vms1.` token: the page's cookie, or the pane's bearer), else the add-in's own verified
        token (an Entra ID token names the user and their email). With token validation "none"
        (loopback trials only) the caller names a demo user, as the preview pane does; such a
        user owns no reservation (none records a user)."""
        if token is not None and token.startswith(user_sign_in.TOKEN_PREFIX):
            who = await self.personal_identity(integ, token)
            user = self.user_sessions().user(integ, token)
            return Organizer(who.email.lower(), frozenset({user} - {""}), f"{who.email}")
        verified = await self.verify_addin_token(integ, token)
        if verified.kind == "none":
            email = demo_user.strip().lower()
            if not is_address(email):
                raise Unauthorized(
                    "token validation is none: name the demo user (?user=)", "user_required"
                )
            return Organizer(email, frozenset(), f"{email} (demo user)")
        shown = f"{verified.email} ({verified.user})" if verified.email else verified.user
        return Organizer(verified.email.lower(), frozenset({verified.user}), shown)

    async def organizer_bookings(self, name: str, who: Organizer) -> list[dict[str, Any]]:
        """The organizer's own bookings (meetings bound to their email, reservations they made
        and have not used), newest first, those still to come before those that are over."""
        integ = self.integration(name)
        found: dict[str, Record] = {}
        asks = ([FindAliases(who.email, "", 1000)] if who.email else []) + (
            [FindAliases("", "", 1000)] if who.users else []
        )
        for ask in asks:
            for record in await self._ask_allocator(name, ask):
                if owns(who, record):
                    found[str(record.get("alias_id", ""))] = record
        now = self.ctx.clock()
        renderer = self._renderers(integ)
        views = [organizer_view(integ, record, now, renderer) for record in found.values()]
        views.sort(key=lambda v: v["created"] or "", reverse=True)
        views.sort(key=lambda v: v["status"] == "deleted" or not v["current"])
        return views

    async def organizer_declines(
        self, name: str, who: Organizer, days: int = 30
    ) -> list[dict[str, Any]]:
        """The organizer's own declines of the last `days` days, newest first, each with its
        reason in plain words and what to do."""
        integ = self.integration(name)
        if not who.email:
            return []
        path = decisions.log_path(self.config.data_dir, integ.name)
        since = self.ctx.clock() - timedelta(days=days)
        renderer = self._renderers(integ)
        found = await asyncio.to_thread(
            own_declines, path, who.email, since, decision_view(integ, renderer)
        )
        for decline in found:
            decline["shown"] = _shown(renderer, decline["time"])
        return found

    async def _own_record(self, name: str, alias: str, who: Organizer) -> Record:
        """The organizer's record of `alias`; NotFound (never Forbidden) for any other, so a
        guess confirms nothing."""
        wanted = alias.strip().lower()
        found: list[Record] = (
            await self._ask_allocator(name, FindAliases(wanted, "", 1000)) if wanted else []
        )
        for record in found:
            if str(record.get("alias", "")).lower() == wanted and owns(who, record):
                return record
        raise NotFound("you have no booking with that video address", "unknown_booking")

    async def organizer_resend(self, name: str, alias: str, who: Organizer, by: str) -> str:
        """Mail the joining details of the organizer's booked meeting to them again (the
        admin console's resend: the allocator queues it with the notifier)."""
        record = await self._own_record(name, alias, who)
        if record.get("status") != "bound" or not record.get("organizer_email"):
            raise NotFound("that video room is not booked for a meeting", "not_booked")
        message_id = await self.admin_resend(name, str(record["alias"]), by)
        log.info(
            "organizer self-service: joining details of %s resent by %s",
            record["alias"],
            by,
            extra={"integration": name, "alias": record["alias"], "by": by},
        )
        return message_id

    async def organizer_cancel(
        self, name: str, alias: str, who: Organizer, by: str
    ) -> dict[str, Any]:
        """Release the organizer's reservation that no meeting uses (as an admin deletes an
        alias: declined from then on); a booked meeting is cancelled in Outlook instead."""
        integ = self.integration(name)
        record = await self._own_record(name, alias, who)
        if record.get("status") != "reserved" or record.get("organizer_email"):
            raise BadRequest(
                "only a reservation that no meeting uses can be cancelled here; to end a booked "
                "meeting, cancel the meeting in Outlook",
                "not_cancellable",
            )
        ask = DeleteAlias(str(record["alias"]), by, unused_only=True)
        try:
            deleted = await self._ask_allocator(name, ask)
        except alias_admin.InUse as exc:  # a meeting bound it since it was read
            raise BadRequest(
                "a meeting now uses this video room; to end it, cancel the meeting in Outlook",
                "not_cancellable",
            ) from exc
        if deleted is None:
            raise NotFound("you have no booking with that video address", "unknown_booking")
        log.warning(
            "organizer self-service: reservation %s cancelled by %s",
            record["alias"],
            by,
            extra={"integration": name, "alias": record["alias"], "by": by},
        )
        return organizer_view(integ, deleted, self.ctx.clock(), self._renderers(integ))

    def stop(self) -> None:
        """Stop every actor this service started, whether or not its root is still alive."""
        try:
            with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
                self.supervisor.stop(block=True, timeout=120)
            for ref in list(self.ctx.supervisors.values()):
                with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
                    ref.stop(block=True, timeout=60)
            self.ctx.scheduler.stop()
        finally:
            if self.lock_fd >= 0:
                os.close(self.lock_fd)
                self.lock_fd = -1


def start(config: Config, **context: Any) -> Service:
    data_dir = Path(config.server.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    # one service per data directory, for the life of the process (StoreInUseError otherwise)
    lock_fd = lock_directory(data_dir, f"the data directory {data_dir}")
    threading.stack_size(THREAD_STACK)
    metrics = context.pop("metrics", None) or Metrics()
    ctx = Context(
        server=config.server,
        data_dir=Path(config.server.data_dir),
        metrics=metrics,
        alarms=Alarms(metrics),
        **context,
    )
    ref = ServiceSupervisor.start(config, ctx)
    svc = Service(config, ctx, ref, lock_fd)
    svc.refresh_personal()
    return svc


def check_online(
    cfg: Config, integ: IntegrationConfig, organizer: str = "", outside: str = ""
) -> list[tuple[bool | None, str]]:
    """Connect to an integration's mailbox (and Pexip's Management Node where the service
    creates conferences): (ok, what was tried) per check; ok None is a warning (it works, but
    reaches further than it should). `organizer`: a mailbox that must be in the service's
    scope; `outside`: one that must not be."""
    checks: list[tuple[bool | None, str]] = []
    try:
        gateway = make_gateway(integ, cfg.data_dir, Metrics())
    except Exception as exc:
        checks.append((False, str(exc)))
    else:
        try:
            probe = getattr(gateway, "probe", None)
            if probe is not None:
                wanted = {"organizer": organizer, "outside": outside}
                exchange = integ.backend in ("ews", "graph")  # the spool has no scope
                checks.extend(probe(**{k: v for k, v in wanted.items() if v and exchange}))
        finally:
            gateway.close()
    if integ.pexip.mode == "management_api" or integ.pexip.management_url:
        checks.append(_probe_pexip(integ))
    return checks


def _probe_pexip(integ: IntegrationConfig) -> tuple[bool, str]:
    px = integ.pexip
    password = px.management_password.reveal() if px.management_password else ""
    # the service's one proxy rule, as for the integration's other calls
    session = use_rule(requests.Session(), integ.advanced.disable_web_proxy)
    client = ManagementClient(px, password, session=session)
    try:
        count = sum(1 for _ in client.list("conference", name="vmrsched connectivity check"))
    except (PexipUnavailable, PexipRefused) as exc:
        return False, f"Pexip management API at {px.management_url}: {exc}"
    finally:
        client.close()
    return True, (
        f"Pexip management API at {px.management_url} answers as {px.management_username!r} "
        f"(read conferences: {count} match a test name)"
    )


def recover_integration(
    cfg: Config,
    integ: IntegrationConfig,
    now: datetime,
    dry_run: bool,
    report: Callable[[Recovered], None],
) -> list[Recovered]:
    """Run recovery against the store and mailbox of a stopped service (StoreInUseError
    while it runs)."""
    store = Store(config_mod.store_dir(cfg.data_dir, integ.name))
    try:
        gateway = make_gateway(integ, cfg.data_dir, Metrics())
        try:
            return recover(integ, gateway, store, now, dry_run, report)
        finally:
            gateway.close()
    finally:
        store.close()


class OfflineAdmin:
    """The admin's acts on the data directory of a stopped service (the CLI uses them when no
    service runs). It holds the data directory's lock while open, so the service cannot start
    meanwhile (StoreInUseError while the service runs). A deletion is committed to the store;
    the organizer's notice waits in the integration's queue and goes out when the service next
    starts, which also publishes the deletion to the policy index and the provisioner."""

    def __init__(self, cfg: Config, clock: Callable[[], datetime] | None = None) -> None:
        self.config = cfg
        self.clock = clock or (lambda: datetime.now(UTC))
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = lock_directory(cfg.data_dir, f"the data directory {cfg.data_dir}")

    def close(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> OfflineAdmin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _integration(self, name: str) -> IntegrationConfig:
        integ = self.config.integration(name)
        if integ is None:
            raise NotFound(f"no integration named {name}", "unknown_integration")
        return integ

    @contextlib.contextmanager
    def _store(self, integ: IntegrationConfig) -> Iterator[Store]:
        store = Store(
            config_mod.store_dir(self.config.data_dir, integ.name),
            clock=self.clock,
            reservation_ttl=timedelta(days=integ.reservation_ttl_days),
            horizon=timedelta(days=integ.booking_horizon_days),
        )
        try:
            yield store
        finally:
            store.close(compact=False)

    def _queue(self, integ: IntegrationConfig, message: Outgoing) -> None:
        queue = OutQueue(config_mod.queue_dir(self.config.data_dir, integ.name))
        try:
            queue.add([message])
        finally:
            queue.close()

    def find_aliases(
        self, name: str, query: str = "", day: str = "", limit: int = 100
    ) -> list[dict[str, Any]]:
        integ = self._integration(name)
        with self._store(integ) as store:
            found = alias_admin.search(store.records(), query, day, max(1, min(limit, 1000)))
        return [admin_view(integ, record, self.clock()) for record in found]

    def delete_alias(self, name: str, alias: str, by: str) -> dict[str, Any]:
        integ = self._integration(name)
        with self._store(integ) as store:
            done = alias_admin.delete(store, integ, integ.renderer(), alias, by, self.clock())
            if done is None:
                raise NotFound(f"no alias {alias} in {name}", "unknown_alias")
            if done.changed:
                store.commit()
        if done.notice is not None:
            self._queue(integ, done.notice)
        log.warning("alias %s of %s deleted by %s (offline)", alias, name, by)
        return admin_view(integ, done.record, self.clock())

    def resend(self, name: str, alias: str, by: str) -> str:
        integ = self._integration(name)
        with self._store(integ) as store:
            found = alias_admin.resend(store, integ, integ.renderer(), alias, self.clock())
        if found is None:
            raise NotFound(
                f"{alias} is not booked for a meeting with an organizer in {name}", "not_booked"
            )
        self._queue(integ, found[1])
        log.info("joining instructions of %s in %s queued again by %s (offline)", alias, name, by)
        return found[1].id

    def decisions(self, name: str, query: str = "", limit: int = 100) -> list[dict[str, Any]]:
        integ = self._integration(name)
        path = decisions.log_path(self.config.data_dir, integ.name)
        return decisions.search(path, query, limit, decision_view(integ, integ.renderer()))


def _iso_or_none(value: Any) -> str | None:
    """A time as ISO 8601 in UTC: from unix seconds, or an ISO string as it is."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return datetime.fromtimestamp(float(value), UTC).isoformat()
    return str(value)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vmrsched")
    except PackageNotFoundError:
        return "unknown"


def alarm_view(alarm: Alarm) -> dict[str, Any]:
    """An active alarm as the admin pages show it: what, why, since when."""
    return {
        "name": alarm.name,
        "message": alarm.message,
        "since": datetime.fromtimestamp(alarm.raised_at, UTC).isoformat(),
    }


def message_view(message: Outgoing, state: str, at: float, failure: str = "") -> dict[str, Any]:
    """A queued or failed message as the admin sees it: never its subject or body (they carry
    the meeting's own subject), only what it is, for whom, and why it failed."""
    return {
        "id": message.id,
        "state": state,
        "kind": message.kind,
        "outcome": message.outcome,
        "reason": message.reason,
        "recipients": list(message.recipients),
        "meeting_uid": message.meeting_uid,
        "correlation_id": message.correlation_id,
        "at": datetime.fromtimestamp(at, UTC).isoformat() if at else None,
        "failure": failure,
    }


def decision_view(
    integ: IntegrationConfig, renderer: Renderer
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A decisions log entry as the admin sees it: its subject is the conference subject the
    poller logged, or, for an entry an older version logged with the meeting's own subject,
    that subject put through the conference subject template now (the privacy lever holds for
    the past too)."""

    def view(entry: dict[str, Any]) -> dict[str, Any]:
        shown = dict(entry)
        if "conference_subject" in shown:
            shown["subject"] = shown.pop("conference_subject")
        else:
            shown["subject"] = answers.shown_subject(
                integ,
                renderer,
                subject=str(entry.get("subject", "")),
                organizer=str(entry.get("organizer", "")),
            )
        return shown

    return view


def admin_view(
    integ: IntegrationConfig, record: Record, now: datetime, renderer: Renderer | None = None
) -> dict[str, Any]:
    """A stored alias as the admin sees it: who booked it for what (its subject is the
    conference subject, rendered when it was bound; for a record without one, its subject put
    through the template now), and when it can be joined (the next occurrences, each widened
    by the join window)."""

    def iso(value: Any) -> str | None:
        return datetime.fromtimestamp(float(value), UTC).isoformat() if value else None

    before = timedelta(minutes=integ.single_use.join_before_minutes)
    after = timedelta(minutes=integ.single_use.join_after_minutes)
    windows: list[dict[str, str]] = []
    raw = record.get("schedule")
    if raw and record.get("status") == "bound":
        try:
            upcoming = recurrence.occurrences_after(decode_schedule(raw), now - after)
            for occurrence in itertools.islice(upcoming, 5):
                windows.append(
                    {
                        "start": occurrence.start.isoformat(),
                        "end": occurrence.end.isoformat(),
                        "joinable_from": (occurrence.start - before).isoformat(),
                        "joinable_until": (occurrence.end + after).isoformat(),
                    }
                )
        except recurrence.RecurrenceError:
            pass
    return {
        "alias": record.get("alias", ""),
        "numeric_alias": record.get("numeric_alias", ""),
        "alias_id": record.get("alias_id", ""),
        "status": record.get("status", ""),
        "reason": record.get("reason", ""),
        "organizer_email": record.get("organizer_email", ""),
        "subject": _conference_subject(integ, record, renderer),
        "meeting_uid": record.get("meeting_uid", ""),
        "conference_name": record.get("name", ""),
        "created": iso(record.get("created")),
        "expires": iso(record.get("expires")),
        "deleted": iso(record.get("deleted")),
        "windows": windows,
    }


def _conference_subject(integ: IntegrationConfig, record: Record, renderer: Renderer | None) -> str:
    if "conference_subject" in record:
        return str(record["conference_subject"])
    if not record.get("subject"):
        return ""  # a reservation: no meeting yet
    return answers.shown_subject(
        integ,
        renderer or integ.renderer(),
        subject=str(record["subject"]),
        organizer=str(record.get("organizer_name") or record.get("organizer_email", "")),
    )


# --- organizer self-service ------------------------------------------------------------------

CANCELLED_BY_ORGANIZER = "organizer self-service"  # in `by`: how a record says who cancelled it

# Every decline reason (DESIGN "Meeting processing rules") in plain words, and what to do: the
# one table the organizer page and its API read.
DECLINE_REASONS: dict[str, tuple[str, str]] = {
    "invalid_alias_id": (
        "The meeting had no video room reference from the add-in (or one the service does not "
        "know), so no video room could be booked.",
        "Open the meeting in Outlook, add a video room with the add-in button, and send the "
        "invitation again.",
    ),
    "alias_deleted": (
        "The video room in the meeting is no longer available: its meeting was cancelled, the "
        "reservation expired or was cancelled, or an administrator removed it.",
        "Remove the old joining details from the meeting, add a new video room with the add-in, "
        "and send the update.",
    ),
    "alias_conflict": (
        "The video room in the meeting already belongs to another meeting (joining details "
        "copied from another invitation).",
        "Remove the copied joining details, add a new video room with the add-in, and send the "
        "invitation again.",
    ),
    "single_in_past": (
        "The meeting had already ended when it reached the booking service.",
        "Nothing to do; for a new meeting, book a new video room with the add-in.",
    ),
    "recurring_in_past": (
        "Every occurrence of the recurring meeting was already in the past.",
        "Nothing to do; for new occurrences, create a new series with a video room from the "
        "add-in.",
    ),
    "general_error": (
        "Something went wrong in the booking service while it handled the meeting.",
        "Send the meeting again later. If it keeps happening, contact your help desk and quote "
        "the reference shown.",
    ),
}
UNKNOWN_REASON = (
    "The booking service declined the meeting.",
    "Add a new video room with the add-in and send the invitation again; if it is declined "
    "again, contact your help desk.",
)

# a booking's state in plain words (deleted ones by the reason they were deleted)
BOOKING_STATES = {
    "reserved": "Reserved, not used in a meeting yet",
    "bound": "Booked for your meeting",
    "cancelled": "Ended: the meeting was cancelled",
    "expired": "Ended: the reservation expired unused",
    "replaced": "Ended: replaced by another video room in the same meeting",
    "by_you": "Ended: you cancelled the reservation",
    "by_admin": "Ended: removed by an administrator",
}


@dataclass(frozen=True)
class Organizer:
    """Who asks on the organizer page: the email their meetings are bound to, and the add-in's
    names for them (the reservations recorded under one of these are theirs). `shown`: for
    the log."""

    email: str
    users: frozenset[str]
    shown: str


def owns(who: Organizer, record: Record) -> bool:
    """The ownership rule: a booking's organizer is its bound organizer_email; an unbound
    reservation belongs to the add-in user who reserved it."""
    organizer = str(record.get("organizer_email") or "").strip().lower()
    if organizer:
        return bool(who.email) and organizer == who.email
    user = record.get("user")
    return bool(user) and user in who.users


def booking_state(record: Record) -> str:
    status = str(record.get("status", ""))
    if status != "deleted":
        return BOOKING_STATES.get(status, status)
    reason = str(record.get("reason", ""))
    if reason in BOOKING_STATES:
        return BOOKING_STATES[reason]
    if CANCELLED_BY_ORGANIZER in reason:
        return BOOKING_STATES["by_you"]
    return BOOKING_STATES["by_admin"]  # never who: an admin's name or address stays theirs


def organizer_view(
    integ: IntegrationConfig, record: Record, now: datetime, renderer: Renderer
) -> dict[str, Any]:
    """A booking as its organizer sees it: the video address, the state in plain words, the
    conference subject, the joining windows to come (times as the integration writes them)."""
    seen = admin_view(integ, record, now, renderer)
    status = seen["status"]
    windows = [
        {
            **w,
            "shown": f"{_shown(renderer, w['joinable_from'])} to "
            f"{_shown(renderer, w['joinable_until'])}",
        }
        for w in seen["windows"]
    ]
    return {
        "alias": seen["alias"],
        "numeric_alias": seen["numeric_alias"],
        "status": status,
        "state": booking_state(record),
        "subject": seen["subject"],
        "created": seen["created"],
        "expires": seen["expires"] if status == "reserved" else None,
        "expires_shown": _shown(renderer, seen["expires"]) if status == "reserved" else "",
        "windows": windows,
        "current": status == "reserved" or (status == "bound" and bool(windows)),
        "can_resend": status == "bound" and bool(seen["organizer_email"]),
        "can_cancel": status == "reserved" and not seen["organizer_email"],
    }


def _shown(renderer: Renderer, iso: str | None) -> str:
    return renderer.format_time(datetime.fromisoformat(iso)) if iso else ""


def own_declines(
    path: Path,
    email: str,
    since: datetime,
    view: Callable[[dict[str, Any]], dict[str, Any]],
    limit: int = 100,
) -> list[dict[str, Any]]:
    """The declines of meetings organized by `email` logged since `since`, newest first (the
    log is read from its end and left where it reaches older entries)."""
    found: list[dict[str, Any]] = []
    for entry in decisions.read(path):
        try:
            when = datetime.fromisoformat(str(entry.get("time", "")))
        except ValueError:
            continue
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        if when < since:
            break
        if entry.get("outcome") != "declined":
            continue
        if str(entry.get("organizer", "")).strip().lower() != email:
            continue
        shown = view(entry)
        reason = str(entry.get("reason", ""))
        explanation, what_to_do = DECLINE_REASONS.get(reason, UNKNOWN_REASON)
        found.append(
            {
                "time": when.isoformat(),
                "subject": shown.get("subject", ""),
                "reason": reason,
                "explanation": explanation,
                "what_to_do": what_to_do,
                # what the help desk asks for; the other declines need none
                "reference": str(entry.get("correlation_id", ""))
                if reason == "general_error"
                else "",
                "alias": str(entry.get("alias", "")),
            }
        )
        if len(found) >= limit:
            break
    return found
