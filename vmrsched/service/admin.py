"""The admin's acts on an integration's aliases and decisions, behind one port (`Admin`) served
two ways: online by the actors (`OnlineAdmin`: the allocator that owns the store does each act,
the notifier owns the outgoing queue), offline by the files (`OfflineAdmin`: the data directory
of a stopped service, for the CLI). Both answer with the same JSON views (views.py), so the
console, the admin API and `vmrsched aliases …` show one thing one way.

The online side also has what only a running service knows: each integration's state, alarms
and queues, and the failed messages an admin may retry or discard."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import pykka

from vmrsched import alias_admin
from vmrsched.actors.bridge import ask_async
from vmrsched.actors.messages import (
    DeleteAlias,
    FindAliases,
    Flush,
    QueueAct,
    QueueContents,
    ResendInstructions,
)
from vmrsched.actors.registry import ActorUnavailable
from vmrsched.config import Config, IntegrationConfig, queue_dir, store_dir
from vmrsched.errors import BadRequest, NotFound, Unavailable
from vmrsched.messages.answers import notice_id
from vmrsched.outgoing import Outgoing
from vmrsched.service.runtime import (
    Runtime,
    offline_stores,
    refuse_shared_records,
    renderer_cache,
)
from vmrsched.service.views import (
    View,
    admin_view,
    alarm_view,
    decision_view,
    iso_or_none,
    message_view,
    version,
)
from vmrsched.store import Record, Store, decisions, lock_directory
from vmrsched.store.outqueue import Failed, OutQueue, Queued, read_contents
from vmrsched.telemetry import DELIVERY_FAILED

log = logging.getLogger("vmrsched.service")

Views = TypeVar("Views", covariant=True)
One = TypeVar("One", covariant=True)
MessageId = TypeVar("MessageId", covariant=True)


class Admin(Protocol[Views, One, MessageId]):
    """The admin's acts, whoever serves them: find aliases (conferences and reservations by
    alias, organizer or subject, touching a day), delete one (declined from then on, its
    organizer told), resend an organizer's joining instructions, search the decisions log.
    Served online (the answers arrive on the event loop: `OnlinePort`) or offline (at once:
    `OfflinePort`); what comes back is the same views either way. Who acted (`by`) is logged."""

    def find_aliases(
        self, name: str, query: str = "", day: str = "", limit: int = 100
    ) -> Views: ...

    def delete_alias(self, name: str, alias: str, by: str) -> One: ...

    def resend(self, name: str, alias: str, by: str) -> MessageId: ...

    def decisions(self, name: str, query: str = "", limit: int = 100) -> Views: ...


OnlinePort = Admin[Awaitable[list[View]], Awaitable[View], Awaitable[str]]
OfflinePort = Admin[list[View], View, str]


def _limited(limit: int) -> int:
    return max(1, min(limit, 1000))


class OnlineAdmin:
    """The admin port served by the running service's actors (the console and the admin API
    ask through it), with the running service's own status."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._renderers = runtime.renderers

    async def find_aliases(
        self, name: str, query: str = "", day: str = "", limit: int = 100
    ) -> list[View]:
        """Conferences and reservations matching `query` (and touching `day`), with windows."""
        _check_day(day)
        integ = self.runtime.integration(name)
        found = await self.runtime.ask_allocator(name, FindAliases(query, day, _limited(limit)))
        now = self.runtime.ctx.clock()
        renderer = self._renderers(integ)
        return [admin_view(integ, record, now, renderer) for record in found]

    async def delete_alias(self, name: str, alias: str, by: str) -> View:
        integ = self.runtime.integration(name)
        try:
            record = await self.runtime.ask_allocator(name, DeleteAlias(alias, by))
        except alias_admin.AlreadyDeleted as exc:
            raise _deleted_already(name, alias, exc.record) from exc
        if record is None:
            raise NotFound(f"no alias {alias} in {name}", "unknown_alias")
        now = self.runtime.ctx.clock()
        view = admin_view(integ, record, now, self._renderers(integ))
        writer = self.runtime.ctx.stores.decisions.writer(name)
        await asyncio.to_thread(_log_deletion, writer, deletion_entry(view, by, now))
        return view

    async def resend(self, name: str, alias: str, by: str) -> str:
        message_id = await self.runtime.ask_allocator(name, ResendInstructions(alias, by))
        if message_id is None:
            raise NotFound(
                f"{alias} is not booked for a meeting with an organizer in {name}", "not_booked"
            )
        return str(message_id)

    async def decisions(self, name: str, query: str = "", limit: int = 100) -> list[View]:
        integ = self.runtime.integration(name)
        view = decision_view(integ, self._renderers(integ))
        logs = self.runtime.ctx.stores.decisions  # files, or the database every instance reads

        def search() -> list[View]:
            return decisions.search_entries(logs.read(integ.name), query, limit, view)

        return await asyncio.to_thread(search)

    # --- what only a running service knows ------------------------------------------------------

    def overview(self) -> list[View]:
        """Each integration with its state, alarms (since when, why) and mailbox lag (the
        incoming side: the oldest item of the last poll)."""
        ctx = self.runtime.ctx
        states = ctx.status.snapshot()
        overview = []
        for integ in self.runtime.config.integrations:
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
                    "last_poll": iso_or_none(state.get("polled")),
                    "alarms": [alarm_view(a) for a in ctx.alarms.active(integ.name)],
                }
            )
        return overview

    def service(self) -> View:
        """The service itself: version, since when it runs, its own alarms (config_invalid
        and the like: not any one integration's) and what the policy endpoint answered."""
        runtime = self.runtime
        now = time.time()
        return {
            "version": version(),
            "started": datetime.fromtimestamp(runtime.started_at, UTC).isoformat(),
            "uptime_seconds": round(now - runtime.started_at, 1),
            "alarms": [alarm_view(a) for a in runtime.ctx.alarms.active("service")],
            "policy": runtime.policy_activity.summary(),
        }

    async def status(self) -> list[View]:
        """`overview` with each integration's outgoing side: how many messages are queued
        and failed, the age of the oldest queued one, and a mailbox lag that counts it (a reply
        that cannot be sent is lag too)."""
        overview = self.overview()
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
                "oldest_queued": iso_or_none(oldest),
                "lag_seconds": outgoing_lag,
            }
            incoming = item["incoming_lag_seconds"]
            item["mailbox_lag_seconds"] = max(incoming or 0.0, outgoing_lag)
        return overview

    async def _queue_contents(self, name: str) -> tuple[list[Queued], list[Failed]]:
        """What the integration's notifier holds, asked in its thread when it runs; read from
        its journal (without writing) when it does not."""
        integ = self.runtime.integration(name)
        try:
            notifier = self.runtime.ctx.registry.get(name, "notifier")
        except ActorUnavailable:
            notifier = None
        if notifier is not None:
            with contextlib.suppress(pykka.ActorDeadError, TimeoutError):
                return await ask_async(notifier, QueueContents(), timeout=10)
        if self.runtime.ctx.shared is not None:
            return [], []  # run by another instance: its admin page shows its queue
        where = queue_dir(self.runtime.config.data_dir, integ.name)
        return await asyncio.to_thread(read_contents, where)

    async def messages(self, name: str, limit: int = 200) -> View:
        """The integration's failed messages (newest first) and queued ones (oldest first)."""
        queued, failed = await self._queue_contents(name)
        return {
            "failed": [
                message_view(f.message, "failed", f.at, f.reason)
                for f in sorted(failed, key=lambda f: f.at, reverse=True)[:limit]
            ],
            "queued": [message_view(q.message, "queued", q.at) for q in queued[:limit]],
        }

    async def retry_message(self, name: str, message_id: str, by: str) -> None:
        await self._notifier_act(name, "retry", message_id, by)

    async def discard_message(self, name: str, message_id: str, by: str) -> None:
        await self._notifier_act(name, "discard", message_id, by)

    async def _notifier_act(self, name: str, act: str, message_id: str, by: str) -> None:
        """Retry or discard one message in the notifier's own thread (it owns the queue)."""
        ctx = self.runtime.ctx
        self.runtime.integration(name)
        try:
            if ctx.status.state(name) != "running":
                raise ActorUnavailable(name)
            notifier = ctx.registry.get(name, "notifier")
            done, failed = await ask_async(
                notifier, QueueAct("retry" if act == "retry" else "discard", message_id), timeout=30
            )
        except (ActorUnavailable, pykka.ActorDeadError, TimeoutError) as exc:
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
            ctx.alarms.clear(name, DELIVERY_FAILED)


class OfflineAdmin:
    """The admin port served by the data directory of a stopped service (the CLI uses it when
    no service runs). It holds the data directory's lock while open, so the service cannot start
    meanwhile (StoreInUseError while the service runs). A deletion is committed to the store;
    the organizer's notice waits in the integration's queue and goes out when the service next
    starts, which also publishes the deletion to the policy index and the provisioner."""

    def __init__(self, cfg: Config, clock: Callable[[], datetime] | None = None) -> None:
        refuse_shared_records(cfg, "the offline admin (a running instance's admin API does not)")
        self.config = cfg
        self.clock = clock or (lambda: datetime.now(UTC))
        self._renderers = renderer_cache()
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
            store_dir(self.config.data_dir, integ.name),
            clock=self.clock,
            reservation_ttl=timedelta(days=integ.reservation_ttl_days),
            horizon=timedelta(days=integ.booking_horizon_days),
        )
        try:
            yield store
        finally:
            store.close(compact=False)

    def _queue(self, integ: IntegrationConfig, message: Outgoing) -> None:
        queue = OutQueue(queue_dir(self.config.data_dir, integ.name))
        try:
            queue.add([message])
        finally:
            queue.close()

    def find_aliases(
        self, name: str, query: str = "", day: str = "", limit: int = 100
    ) -> list[View]:
        _check_day(day)
        integ = self._integration(name)
        with self._store(integ) as store:
            found = alias_admin.search(store.records(), query, day, _limited(limit))
        renderer = self._renderers(integ)
        return [admin_view(integ, record, self.clock(), renderer) for record in found]

    def delete_alias(self, name: str, alias: str, by: str) -> View:
        integ = self._integration(name)
        renderer = self._renderers(integ)
        with self._store(integ) as store:
            try:
                done = alias_admin.delete(store, integ, renderer, alias, by, self.clock())
            except alias_admin.AlreadyDeleted as exc:
                raise _deleted_already(name, alias, exc.record) from exc
            if done is None:
                raise NotFound(f"no alias {alias} in {name}", "unknown_alias")
            store.commit()
        if done.notice is not None:
            self._queue(integ, done.notice)
        log.warning("alias %s of %s deleted by %s (offline)", alias, name, by)
        now = self.clock()
        view = admin_view(integ, done.record, now, renderer)
        writer = decisions.FileDecisions(self.config.data_dir).writer(name)
        try:
            _log_deletion(writer, deletion_entry(view, by, now))
        finally:
            writer.close()
        return view

    def resend(self, name: str, alias: str, by: str) -> str:
        integ = self._integration(name)
        with self._store(integ) as store:
            found = alias_admin.resend(store, integ, self._renderers(integ), alias, self.clock())
        if found is None:
            raise NotFound(
                f"{alias} is not booked for a meeting with an organizer in {name}", "not_booked"
            )
        self._queue(integ, found[1])
        log.info("joining instructions of %s in %s queued again by %s (offline)", alias, name, by)
        return found[1].id

    def decisions(self, name: str, query: str = "", limit: int = 100) -> list[View]:
        integ = self._integration(name)
        view = decision_view(integ, self._renderers(integ))
        stores = offline_stores(self.config)  # the config's backend: files or the database
        try:
            return decisions.search_entries(stores.decisions.read(integ.name), query, limit, view)
        finally:
            stores.close()


if TYPE_CHECKING:  # both serve the one port: mypy checks it here

    def _serve_the_port(runtime: Runtime, cfg: Config) -> tuple[OnlinePort, OfflinePort]:
        return OnlineAdmin(runtime), OfflineAdmin(cfg)


def deletion_entry(view: View, by: str, when: datetime) -> dict[str, Any]:
    """An admin's deletion of an alias as a line of the decisions log, beside the poller's
    answers: the log survives what a store may lose (a record `store repair` could not keep),
    and `recover` reads it, so that a deleted alias's meeting is never bound again."""
    return {
        "time": when.isoformat(),
        "conference_subject": view.get("subject", ""),
        "organizer": view.get("organizer_email", ""),
        "sender": "",
        "outcome": "deleted",
        "reason": "admin",
        "correlation_id": "",
        "alias": view.get("alias", ""),
        "meeting_uid": str(view.get("meeting_uid", ""))[:300],
        "occurrence": "",
        "item": "",
        "detail": f"deleted by {by}"[:500],
    }


def _log_deletion(writer: decisions.DecisionWriter, entry: dict[str, Any]) -> None:
    """Append a deletion to the decisions log. The deletion is durable already and stands
    whatever happens here; a log that does not take it is said in the service's log, since
    `recover` could then bind that meeting again were its record lost."""
    try:
        writer.append([entry])
    except Exception:
        log.exception(
            "the decisions log did not take the deletion of %s (the alias is deleted)",
            entry["alias"],
        )


def _deleted_already(name: str, alias: str, record: Record) -> NotFound:
    """A second delete of one alias: not found among the aliases that can be deleted (404
    `unknown_alias`, as openapi.yaml gives this route), saying when and by whom it went."""
    when = iso_or_none(record.get("deleted")) or "earlier"
    why = str(record.get("reason") or "deleted")
    return NotFound(
        f"{alias} in {name} was deleted already ({why}, {when}): nothing changed",
        "unknown_alias",
    )


def _check_day(day: str) -> None:
    """BadRequest for a `day` that is not YYYY-MM-DD from 1900 to 2999 ("" is any day)."""
    if day:
        try:
            alias_admin.parse_day(day)
        except ValueError as exc:
            raise BadRequest("day must be YYYY-MM-DD, from 1900 to 2999", "bad_day") from exc
