"""The running service's core: the actor tree it started, the config it runs (replaced by a
reload), the data directory's lock, readiness, and what every use case shares: the integration
lookup, the one renderer cache and the way to ask an integration's allocator.

Every use case module (add-in, admin, sign-ins, organizer, Graph push, policy) holds this
object and reads `config` when it acts, never a copy: a reload swaps it here and nowhere
else."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pykka

from vmrsched import config as config_mod
from vmrsched.actors.bridge import ask, ask_async
from vmrsched.actors.context import Context, Stores, file_stores
from vmrsched.actors.follower import Follower
from vmrsched.actors.messages import ReleaseAll, Reload, StopTaking
from vmrsched.actors.ownership import Ownership, SharedStorage
from vmrsched.actors.registry import ActorUnavailable
from vmrsched.actors.service import ReloadResult, ServiceSupervisor
from vmrsched.config import Config, IntegrationConfig, PerConfig, ServerChanges, as_reloaded
from vmrsched.errors import BadRequest, NotFound, ServiceError, Unavailable
from vmrsched.postgres.connection import Connect
from vmrsched.postgres.decisions import DatabaseDecisions
from vmrsched.postgres.pool import LeaseOf, Pool
from vmrsched.postgres.sessions import DatabaseAdminSessions, DatabaseAttempts, DatabaseSessions
from vmrsched.postgres.tokens import DatabaseGraphState, DatabaseTokenCache
from vmrsched.store import lock_directory
from vmrsched.telemetry import CONFIG_INVALID, NOT_READY, Alarms, Metrics, PolicyActivity
from vmrsched.templating import Renderer

log = logging.getLogger("vmrsched.service")

THREAD_STACK = 512 * 1024  # hundreds of integrations x 3 children must fit
# The young generation's collection threshold. At Python's default (700) the objects each
# request leaves behind for a while (the store's new records, the requests in flight) set one
# off every few add-in reservations, each walking every young object alive, and a full
# collection (about 14 ms with 100,000 conferences) followed every second: 5 us of the event
# loop and the allocator per reservation under bench/addin_api.py's load. At 5,000, 1 us,
# young collections of about 0.5 ms and a full one every few seconds; what it costs is at most
# that many more container objects waiting for a collection.
GC_YOUNG_THRESHOLD = 5000


def renderer_cache() -> PerConfig[Renderer]:
    """Compiled templates per integration, built once per config object (a reload brings a
    new one). The service keeps one of these for every path (the add-in, personal VMRs, the
    admin's and the organizer's views); the actors build their own in their threads."""
    return PerConfig(IntegrationConfig.renderer)


class Runtime:
    """The actor tree and the config it runs. `Service` (facade.py) is this plus one part per
    use case."""

    def __init__(
        self,
        config: Config,
        ctx: Context,
        supervisor: pykka.ActorRef[ServiceSupervisor],
        lock_fd: int = -1,
    ) -> None:
        self.config = config
        self.ctx = ctx
        self.supervisor = supervisor
        self.lock_fd = lock_fd  # the data directory's lock, held while the service runs
        self.started_at = time.time()
        # the [server] and [storage] keys the file changed that wait for a restart (as the
        # last reload found them: what runs still has the values the service started with)
        self.restart_needed: tuple[str, ...] = ()
        self.policy_activity = PolicyActivity()  # what the policy endpoint answered
        self.renderers = renderer_cache()  # the one cache every use case renders with
        # which integrations run here, when instances share a database (facade.start)
        self.ownership: pykka.ActorRef[Ownership] | None = None
        self.follower: pykka.ActorRef[Follower] | None = None

    def own(self, ownership: pykka.ActorRef[Ownership], follower: pykka.ActorRef[Follower]) -> None:
        """With a shared database: who decides what runs here, and who keeps the policy index
        of the rest current."""
        self.ownership = ownership
        self.follower = follower

    @property
    def metrics(self) -> Metrics:
        return self.ctx.metrics

    @property
    def base_dir(self) -> Path:
        """Where the config's relative paths (CA files, directory files) start."""
        return self.config.path.parent if self.config.path else Path(".")

    def integration_names(self) -> list[str]:
        return [i.name for i in self.config.integrations]

    def integration(self, name: str) -> IntegrationConfig:
        integ = self.config.integration(name)
        if integ is None:
            raise NotFound("unknown integration", "unknown_integration")
        return integ

    async def ask_allocator(self, name: str, payload: Any) -> Any:
        """Ask the integration's allocator (the store's owner) from the event loop; Unavailable
        while the integration does not run or does not answer within a minute."""
        self.integration(name)
        state = self.ctx.status.state(name)
        try:
            if state != "running":
                raise ActorUnavailable(f"integration {name} is {state or 'not running'}")
            allocator = self.ctx.registry.get(name, "allocator")
            return await ask_async(allocator, payload, timeout=60)
        except (ActorUnavailable, pykka.ActorDeadError, TimeoutError) as exc:
            raise Unavailable(f"integration {name} cannot take requests right now") from exc

    # --- reload -----------------------------------------------------------------------------

    def _load_for_reload(self, path: Path | None) -> Config | None:
        source = path or self.config.path
        if source is None:
            raise ValueError("no config file to reload from")
        try:
            new = config_mod.load(source)
        except config_mod.ConfigError as exc:
            for problem in exc.problems:
                # "key — what": a key ending in "password" followed by ": " would have its
                # first word taken for a credential by the log's redaction
                key, sep, what = problem.partition(": ")
                log.error(
                    "config reload refused, the running config stays: %s",
                    f"{key} — {what}" if sep else problem,
                )
            self.ctx.alarms.raise_("service", CONFIG_INVALID, "; ".join(exc.problems), restate=True)
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
        new, server = as_reloaded(self.config, new)
        result = ask(self.supervisor, Reload(new), timeout=300)
        return self._applied(new, result, server)

    async def reload_async(self, path: Path | None = None) -> ReloadResult | None:
        """`reload` for the event loop: the file is read in a worker thread and the supervisor
        answers through a future (bridge.ask_async)."""
        new = await asyncio.to_thread(self._load_for_reload, path)
        if new is None:
            return None
        new, server = as_reloaded(self.config, new)
        result: ReloadResult = await ask_async(self.supervisor, Reload(new), timeout=300)
        return self._applied(new, result, server)

    def _applied(self, new: Config, result: ReloadResult, server: ServerChanges) -> ReloadResult:
        self.config = new
        self.ctx.metrics.config_reloads.labels("applied").inc()
        result = dataclasses.replace(result, restart_needed=list(server.pending))
        self.restart_needed = server.pending
        if server.applied:
            log.info("%s: applied", ", ".join(server.applied))
        if server.pending:
            log.warning(
                "%s: take effect after a restart (the running values stay until then)",
                ", ".join(server.pending),
            )
        # what changed in the file; with a shared database also what this instance runs (a
        # changed integration restarted here only if it runs here, an added one starts where
        # its lease is taken)
        here = "" if self.ctx.shared is None else f"; running here: {self.ctx.shared.owned()}"
        log.info(
            "config reloaded: changed=%s added=%s removed=%s%s",
            result.changed,
            result.added,
            result.removed,
            here,
        )
        return result

    # --- readiness and stop -------------------------------------------------------------------

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
        # with a shared database an instance answers for what it runs: an integration
        # another instance owns ("elsewhere") is that instance's to report
        owned = None if self.ctx.shared is None else set(self.ctx.shared.owned())
        here = {name: i for name, i in integrations.items() if owned is None or name in owned}
        ready = bool(integrations) and all(
            i["state"] == "running" and not NOT_READY.intersection(i["alarms"])
            for i in here.values()
        )
        shared = self.ctx.shared
        if shared is not None and (not shared.reachable or shared.name_taken):
            ready = False  # cut off from the database, or its name taken: it runs nothing
        body: dict[str, Any] = {
            "status": "ready" if ready else "not_ready",
            "integrations": integrations,
            "alarms": [a.name for a in self.ctx.alarms.active("service")],
        }
        if shared is not None:
            body["instance"] = shared.instance
            body["owned"] = shared.owned()
            if shared.name_taken:
                body["error"] = shared.name_taken
        return ready, body

    def stop(self) -> None:
        """Stop every actor this service started, whether or not its root is still alive."""
        try:
            ownership, self.ownership = self.ownership, None
            follower, self.follower = self.follower, None
            if follower is not None:
                with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
                    follower.stop(block=True, timeout=30)
            if ownership is not None:  # no more integrations taken while stopping
                with contextlib.suppress(pykka.ActorDeadError, TimeoutError):
                    ask(ownership, StopTaking(), timeout=30)
            with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
                self.supervisor.stop(block=True, timeout=120)
            for ref in list(self.ctx.supervisors.values()):
                with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
                    ref.stop(block=True, timeout=60)
            if ownership is not None:  # every integration stopped here: hand them over now
                with contextlib.suppress(pykka.ActorDeadError, TimeoutError):
                    ask(ownership, ReleaseAll(), timeout=30)
                with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
                    ownership.stop(block=True, timeout=30)
            self.ctx.scheduler.stop()
            self.ctx.stores.close()
        finally:
            if self.lock_fd >= 0:
                os.close(self.lock_fd)
                self.lock_fd = -1


def _collect_less_often() -> None:
    """The young generation's threshold raised to GC_YOUNG_THRESHOLD (never lowered, and left
    alone where collection is off)."""
    young, middle, old = gc.get_threshold()
    if 0 < young < GC_YOUNG_THRESHOLD:
        gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def database_stores(connect: Connect, lease_of: LeaseOf | None) -> Stores:
    """Everything in the shared database: the integration-owned state fenced by `lease_of`
    (the lease this instance holds for an integration; None: unfenced, for the offline tools
    with every instance stopped), the sign-ins' for every instance alike."""
    pool = Pool(connect)
    attempts = DatabaseAttempts(pool)

    def close() -> None:
        attempts.close()
        pool.close()

    return Stores(
        decisions=DatabaseDecisions(pool, lease_of),
        user_sessions=DatabaseSessions(pool),
        admin_sessions=DatabaseAdminSessions(pool),
        attempts=attempts,
        token_cache=lambda name: DatabaseTokenCache(pool, name, lease_of),
        graph_state=lambda name: DatabaseGraphState(pool, name, lease_of),
        close=close,
    )


def database(cfg: Config, service: bool = False) -> Connect:
    """Connections to the config's database (autocommit: every unit of work is an explicit
    transaction). BadRequest when the config names none.

    `service`: the running service's own, whose transactions are short. The database ends a
    session of theirs left idle inside a transaction for a lease
    (idle_in_transaction_session_timeout): a process paused (SIGSTOP, a frozen VM) in the middle
    of a fenced write holds a share lock on its lease row, which would keep every other
    instance from taking the lease over until it resumes. The offline tools (`store migrate`)
    may think longer between two statements of one transaction, and get no such limit."""
    if cfg.storage.dsn is None:
        raise BadRequest(
            "[storage] names no database: set dsn_env or dsn_file", "no_database_configured"
        )
    dsn = cfg.storage.dsn.reveal()
    # a connection that cannot be made gives up within a third of a lease, so that an instance
    # cut off from the database still gives its integrations up before its leases run out
    timeout = max(1, min(10, int(cfg.storage.lease_seconds / 3)))
    idle = int(cfg.storage.lease_seconds * 1000)

    def connect() -> psycopg.Connection[Any]:
        extra: dict[str, Any] = {}
        if service:  # beside any options the DSN gives
            given = psycopg.conninfo.conninfo_to_dict(dsn).get("options") or ""
            extra["options"] = f"{given} -c idle_in_transaction_session_timeout={idle}".strip()
        # and one whose peer stops answering (packets lost, a machine gone) fails within the
        # same time instead of waiting out the kernel's minutes of retransmissions: a call
        # stuck there would keep the integration, and its spool, from stopping
        return psycopg.connect(
            dsn,
            autocommit=True,
            connect_timeout=timeout,
            keepalives=1,
            keepalives_idle=timeout,
            keepalives_interval=1,
            keepalives_count=3,
            tcp_user_timeout=timeout * 1000,
            **extra,
        )

    return connect


def refuse_shared_records(cfg: Config, what: str) -> None:
    """ServiceError (shared_storage) when the records are in the shared database: the offline
    tools work on the files under data_dir, which that service never reads, so working on them
    would answer from, or write into, records nobody uses."""
    if cfg.storage.backend == "postgresql":
        raise ServiceError(
            f"{what} works on the files under data_dir, and this config keeps the records in "
            'the shared database ([storage] backend = "postgresql")',
            "shared_storage",
        )


def offline_stores(cfg: Config) -> Stores:
    """The stores for a tool beside the service (the CLI): the config's backend, nothing
    fenced (such a tool only reads, or runs while every instance is stopped). Close it after."""
    if cfg.storage.backend == "postgresql":
        return database_stores(database(cfg), None)
    return file_stores(Path(cfg.server.data_dir))


def state_stores(config: Config, shared: SharedStorage | None) -> Stores:
    """Where this service keeps the state beside its records, chosen once: the shared database
    with `[storage] backend = "postgresql"` (writes of an integration's state fenced by the
    lease this instance holds for it), else files under data_dir, as always."""
    if shared is None:
        return file_stores(Path(config.server.data_dir))
    return database_stores(shared.connect, shared.require_lease)


def boot(config: Config, **context: Any) -> tuple[Context, pykka.ActorRef[ServiceSupervisor], int]:
    """Lock the data directory (one service per data directory for the life of the process:
    StoreInUseError otherwise) and start the actor tree: (its context, its root, the lock)."""
    data_dir = Path(config.server.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    lock_fd = lock_directory(data_dir, f"the data directory {data_dir}")
    threading.stack_size(THREAD_STACK)
    _collect_less_often()
    metrics = context.pop("metrics", None) or Metrics()
    if context.get("stores") is None:
        context["stores"] = state_stores(config, context.get("shared"))
    ctx = Context(
        server=config.server,
        data_dir=Path(config.server.data_dir),
        metrics=metrics,
        alarms=Alarms(metrics),
        **context,
    )
    return ctx, ServiceSupervisor.start(config, ctx), lock_fd
