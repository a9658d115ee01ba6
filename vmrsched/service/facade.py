"""`Service`: the one object the front ends (http/, cli/) hold. It is the runtime (the actor
tree, the config, readiness, reload, stop) composed with one part per use case, and it keeps
the names the front ends and tests have always called, each handing over to its part:

- `single_use`, `personal` (addin.py): the add-in's single-use and personal VMRs;
- `sign_ins` (sign_ins.py): token verification and every sign-in;
- `admin` (admin.py): the admin port served by the actors, and the running service's status;
- `self_service` (organizer.py): the organizer's page and API;
- `policy` (policy.py) and `graph` (graph_push.py): what Pexip nodes ask and Graph pushes.

The async names return their part's coroutine rather than awaiting it in one more frame: the
add-in's reservation and the policy answer are hot paths (bench/addin_api.py, bench/policy.py)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pykka

from vmrsched.actors.context import Context
from vmrsched.actors.follower import Follower
from vmrsched.actors.ownership import Ownership
from vmrsched.actors.service import ReloadResult, ServiceSupervisor
from vmrsched.config import Config, IntegrationConfig
from vmrsched.postgres.peers import Peers, shared_key
from vmrsched.service.addin import Personal, Reservation, SingleUse
from vmrsched.service.admin import OnlineAdmin
from vmrsched.service.graph_push import GraphPush
from vmrsched.service.organizer import Organizer, SelfService
from vmrsched.service.policy import PolicyAnswers
from vmrsched.service.runtime import Runtime, boot
from vmrsched.service.sign_ins import SignIns, organizer_page_path
from vmrsched.service.storage import open_shared
from vmrsched.service.views import View
from vmrsched.signin import identity, users
from vmrsched.store import Record

__all__ = ["ReloadResult", "Service", "start"]


class Service(Runtime):
    """The facade: the runtime plus its use cases (see the module's docstring)."""

    def __init__(
        self,
        config: Config,
        ctx: Context,
        supervisor: pykka.ActorRef[ServiceSupervisor],
        lock_fd: int = -1,
    ) -> None:
        super().__init__(config, ctx, supervisor, lock_fd)
        self.sign_ins = SignIns(self)
        self.single_use = SingleUse(self)
        self.personal = Personal(self)
        self.policy = PolicyAnswers(self)
        self.graph = GraphPush(self)
        self.admin = OnlineAdmin(self)
        self.self_service = SelfService(self, self.sign_ins, self.admin)
        # with a shared database: who runs each integration, where, and the instances' key
        self.peers = None if ctx.shared is None else Peers(ctx.shared.connect)

    # --- the add-in ---------------------------------------------------------------------------

    def single_use_vmr(
        self,
        integ: IntegrationConfig,
        who: identity.Identity,
        read: Callable[[], Awaitable[bytes]] | None = None,
    ) -> Awaitable[Reservation]:
        return self.single_use.single_use_vmr(integ, who, read)

    def reserve(
        self, name: str, timeout: float, who: identity.Identity | None = None
    ) -> Awaitable[Record]:
        return self.single_use.reserve(name, timeout, who)

    def placeholder_instructions(self, integ: IntegrationConfig) -> str:
        return self.single_use.placeholder_instructions(integ)

    def flush_reserved_log(self) -> None:
        self.single_use.reserved_log.flush()

    def personal_vmrs(
        self, integ: IntegrationConfig, who: identity.Identity, demo_user: str = ""
    ) -> Awaitable[list[dict[str, Any]]]:
        return self.personal.personal_vmrs(integ, who, demo_user)

    def refresh_personal(self) -> None:
        self.personal.refresh()

    # --- who asks: tokens and sign-ins ----------------------------------------------------------

    def use_http_client(self, session: Callable[[], aiohttp.ClientSession]) -> None:
        self.sign_ins.use_http_client(session)

    def verify_addin_token(
        self, integ: IntegrationConfig, token: str | None
    ) -> Awaitable[identity.Identity]:
        return self.sign_ins.verify_addin_token(integ, token)

    def personal_identity(
        self, integ: IntegrationConfig, token: str | None
    ) -> Awaitable[identity.Identity]:
        return self.sign_ins.personal_identity(integ, token)

    def user_sessions(self) -> users.UserSignIn:
        return self.sign_ins.user_sessions()

    def personal_redirect_uri(self, integ: IntegrationConfig) -> str:
        return self.sign_ins.personal_redirect_uri(integ)

    def start_personal_sign_in(self, name: str) -> str:
        return self.sign_ins.start_personal_sign_in(name)

    def finish_personal_sign_in(self, name: str, query: dict[str, str]) -> Awaitable[users.Session]:
        return self.sign_ins.finish_personal_sign_in(name, query)

    def personal_sign_out(self, name: str, token: str | None) -> Awaitable[None]:
        return self.sign_ins.personal_sign_out(name, token)

    def admin_sign_in_enabled(self) -> bool:
        return self.sign_ins.admin_sign_in_enabled()

    def admin_redirect_uri(self) -> str:
        return self.sign_ins.admin_redirect_uri()

    def start_admin_sign_in(self) -> str:
        return self.sign_ins.start_admin_sign_in()

    def finish_admin_sign_in(self, query: dict[str, str]) -> Awaitable[str]:
        return self.sign_ins.finish_admin_sign_in(query)

    def start_sign_in(self, name: str) -> Awaitable[str]:
        return self.sign_ins.start_sign_in(name)

    def finish_sign_in(self, query: dict[str, str]) -> Awaitable[tuple[str, str]]:
        return self.sign_ins.finish_sign_in(query)

    # --- Pexip nodes and Graph --------------------------------------------------------------------

    def policy_answer(self, local_alias: str) -> tuple[str, dict[str, Any]]:
        return self.policy.policy_answer(local_alias)

    def graph_validation(self, name: str) -> bool:
        return self.graph.graph_validation(name)

    def graph_notification(self, name: str, notifications: list[dict[str, Any]]) -> None:
        self.graph.graph_notification(name, notifications)

    # --- admin ------------------------------------------------------------------------------------

    def admin_overview(self) -> list[View]:
        return self.admin.overview()

    def admin_service(self) -> View:
        return self.admin.service()

    def admin_status(self) -> Awaitable[list[View]]:
        return self.admin.status()

    def admin_messages(self, name: str, limit: int = 200) -> Awaitable[View]:
        return self.admin.messages(name, limit)

    def admin_retry_message(self, name: str, message_id: str, by: str) -> Awaitable[None]:
        return self.admin.retry_message(name, message_id, by)

    def admin_discard_message(self, name: str, message_id: str, by: str) -> Awaitable[None]:
        return self.admin.discard_message(name, message_id, by)

    def admin_decisions(self, name: str, query: str, limit: int) -> Awaitable[list[View]]:
        return self.admin.decisions(name, query, limit)

    def admin_find_aliases(
        self, name: str, query: str = "", day: str = "", limit: int = 100
    ) -> Awaitable[list[View]]:
        return self.admin.find_aliases(name, query, day, limit)

    def admin_delete_alias(self, name: str, alias: str, by: str) -> Awaitable[View]:
        return self.admin.delete_alias(name, alias, by)

    def admin_resend(self, name: str, alias: str, by: str) -> Awaitable[str]:
        return self.admin.resend(name, alias, by)

    def _ask_allocator(self, name: str, payload: Any) -> Awaitable[Any]:
        return self.ask_allocator(name, payload)

    # --- instances sharing a database: requests passed on to an integration's owner ----------

    @property
    def shares_database(self) -> bool:
        return self.ctx.shared is not None

    @property
    def instance_name(self) -> str:
        return "" if self.ctx.shared is None else self.ctx.shared.instance

    def runs_elsewhere(self, name: str) -> bool:
        """Whether `name` is a configured integration this instance holds no lease for (with a
        shared database): another instance runs it, or will once a takeover is done."""
        shared = self.ctx.shared
        return (
            shared is not None
            and self.config.integration(name) is not None
            and not shared.owns(name)
        )

    async def owner_of(self, name: str) -> tuple[str, str] | None:
        """(instance, URL) of the other instance that runs `name` now; None when none does or it
        advertised no URL. Read in a worker thread, kept a second (Peers)."""
        if self.peers is None:
            return None
        owner = await asyncio.to_thread(self.peers.owner, name)
        if owner is None or not owner.url or owner.instance == self.instance_name:
            return None
        return owner.instance, owner.url

    def forget_owner(self, name: str) -> None:
        if self.peers is not None:
            self.peers.forget(name)

    async def shared_secret(self, name: str) -> bytes:
        """The instances' shared secret `name` (made by the first instance that asks)."""
        if self.ctx.shared is None:
            raise LookupError("no shared database: no shared secrets")
        return await asyncio.to_thread(shared_key, self.ctx.shared.connect, name)

    async def forwarding_key(self) -> bytes:
        """The key every instance proves passed-on requests with (made once, in the database)."""
        if self.peers is None:
            raise LookupError("no shared database: nothing is passed on")
        return await asyncio.to_thread(self.peers.key)

    # --- organizer self-service (DESIGN "Organizer self-service") ----------------------------

    def organizer_page_path(self, integ: IntegrationConfig) -> str:
        return organizer_page_path(integ)

    def organizer_redirect_uri(self, integ: IntegrationConfig) -> str:
        return self.sign_ins.organizer_redirect_uri(integ)

    def organizer_sign_in_available(self, integ: IntegrationConfig) -> bool:
        return self.sign_ins.organizer_sign_in_available(integ)

    def start_organizer_sign_in(self, name: str) -> str:
        return self.sign_ins.start_organizer_sign_in(name)

    def finish_organizer_sign_in(
        self, name: str, query: dict[str, str]
    ) -> Awaitable[users.Session]:
        return self.sign_ins.finish_organizer_sign_in(name, query)

    def organizer(
        self, integ: IntegrationConfig, token: str | None, demo_user: str = ""
    ) -> Awaitable[Organizer]:
        return self.self_service.organizer(integ, token, demo_user)

    def organizer_bookings(self, name: str, who: Organizer) -> Awaitable[list[View]]:
        return self.self_service.bookings(name, who)

    def organizer_declines(
        self, name: str, who: Organizer, days: int = 30
    ) -> Awaitable[list[View]]:
        return self.self_service.declines(name, who, days)

    def _own_record(self, name: str, alias: str, who: Organizer) -> Awaitable[Record]:
        return self.self_service.own_record(name, alias, who)

    # Resend and cancel read the organizer's record here, then act on it: the record read is
    # one step of its own (tests hand in a stale one to show the allocator checks again).

    async def organizer_resend(self, name: str, alias: str, who: Organizer, by: str) -> str:
        """Mail the joining details of the organizer's booked meeting to them again."""
        record = await self._own_record(name, alias, who)
        return await self.self_service.resend(name, record, by)

    async def organizer_cancel(self, name: str, alias: str, who: Organizer, by: str) -> View:
        """Release the organizer's reservation that no meeting uses."""
        self.integration(name)
        record = await self._own_record(name, alias, who)
        return await self.self_service.cancel(name, record, by)


def start(config: Config, **context: Any) -> Service:
    """Start the service on `config`: the data directory locked, the actor tree running, the
    personal rooms of file directories published to the policy index."""
    if config.storage.backend == "postgresql" and "shared" not in context:
        context["shared"] = open_shared(config)
    ctx, ref, lock_fd = boot(config, **context)
    if ctx.shared is not None and not ctx.shared.url:  # heartbeats tell the others
        ctx.shared.url = config.storage.advertised(config.server, socket.gethostname())
    svc = Service(config, ctx, ref, lock_fd)
    if ctx.shared is not None:
        svc.own(
            Ownership.start(
                ctx.shared,
                svc.integration_names,
                ref.tell,
                ctx.scheduler.call_later,
                ctx.metrics,
                ctx.alarms,
            ),
            Follower.start(
                ctx.shared,
                lambda: svc.config.integrations,
                ctx.alias_index,
                ctx.scheduler.call_later,
            ),
        )
    svc.refresh_personal()
    return svc
