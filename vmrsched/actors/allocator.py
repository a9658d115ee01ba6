"""AliasAllocator: the sole owner of an integration's store. Every state change (reserving an
alias, binding it to a meeting, cancelling) happens in this actor's thread, one at a time, and is
committed (fsynced) before anyone is told about it.

A full disk (ENOSPC, EDQUOT) takes back the writes it refused (the store stays as on disk) and
answers their requests at once with StorageFull (503 storage_full); the storage_full alarm stays
until a probe write succeeds. No restart: the next write simply tries the disk again.

The hourly sweep expires reservations and archives finished meetings for good, so it runs only
when the wall clock moved forward by no more than the time that really passed (the boot-time
clock, which setting the time does not move) plus SWEEP_CLOCK_MARGIN since the last sweep: a
clock set 40 days ahead would otherwise destroy next week's meetings."""

from __future__ import annotations

import contextlib
import gc
import logging
import random
import time
import traceback
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pykka

from vmrsched import alias_admin
from vmrsched.actors.bridge import ask, deliver
from vmrsched.actors.child import SupervisedChild
from vmrsched.actors.messages import (
    Crash,
    DeleteAlias,
    Enqueue,
    FindAliases,
    Poke,
    ProcessMeetings,
    Request,
    ResendInstructions,
    Reserve,
    Sweep,
)
from vmrsched.actors.registry import ActorUnavailable
from vmrsched.config import IntegrationConfig
from vmrsched.errors import StorageFull
from vmrsched.messages import answers
from vmrsched.messages.answers import Step
from vmrsched.outgoing import Outgoing
from vmrsched.pexip.policy import FIELD_MAX, AliasIndex, Room, RoomSettings, clip
from vmrsched.rules.meetings import Meeting, general_error
from vmrsched.store import (
    DatabaseStore,
    Record,
    StorageFullError,
    StorageUnavailableError,
    Store,
    StoreBrokenError,
    StoreCorruptError,
    StoreWrites,
    decode_schedule,
)
from vmrsched.store.records import highest_sequence
from vmrsched.telemetry import ALIAS_SPACE_LOW, STORAGE_FULL, STORAGE_UNAVAILABLE, STORE_CORRUPT

log = logging.getLogger("vmrsched.allocator")
CORRUPT_ALARM = STORE_CORRUPT
# alias_space_low is raised when this share of the range is used up, and cleared below it:
# drawing a free alias takes ever more tries as the range fills, and fails when it is full
ALIAS_SPACE_LOW_AT = 0.8
# while the disk is full, how often a probe write asks whether there is room again
SPACE_PROBE_SECONDS = 2.0
# how far the wall clock may run ahead of the time that really passed between two sweeps
SWEEP_CLOCK_MARGIN = timedelta(days=1)


def uptime() -> float:
    """Seconds on a clock that setting the time does not move and that counts suspend."""
    if hasattr(time, "CLOCK_BOOTTIME"):
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    return time.monotonic()


def room_settings(integ: IntegrationConfig) -> RoomSettings:
    """What the integration's config says about all of its rooms on Pexip."""
    su = integ.single_use
    return RoomSettings(
        integ.name,
        timedelta(minutes=su.join_before_minutes),
        timedelta(minutes=su.join_after_minutes),
        su.theme,
        su.identity_provider_group,
        su.other_participants,
    )


def room_of(record: Record, settings: RoomSettings, archived: bool = False) -> Room:
    """A stored record as the policy index holds it (an archived one: refused)."""
    status = "archived" if archived else record["status"]
    raw = record.get("schedule") if status == "bound" else None
    return Room(
        record["alias_id"],
        record.get("alias", ""),
        record.get("numeric_alias", ""),
        status,
        settings,
        decode_schedule(raw) if raw else None,
        record.get("name", ""),
        record.get("description", ""),
        highest_sequence(record) if status == "bound" else -1,
    )


class _ServiceStore(Store):
    """The store, with the aliases Pexip's own services route counted as taken (the policy
    index holds what a provisioner last read of them), so none is handed out."""

    def __init__(self, *args: Any, index: AliasIndex, **kwargs: Any) -> None:
        self._services = index  # set first: loading may ask numeric_taken
        super().__init__(*args, **kwargs)

    def numeric_taken(self, numeric_alias: str) -> bool:
        return super().numeric_taken(numeric_alias) or self._services.alias_taken(numeric_alias)


class _ServiceDatabaseStore(DatabaseStore):
    """The same on the shared database."""

    def __init__(self, *args: Any, index: AliasIndex, **kwargs: Any) -> None:
        self._services = index
        super().__init__(*args, **kwargs)

    def numeric_taken(self, numeric_alias: str) -> bool:
        return super().numeric_taken(numeric_alias) or self._services.alias_taken(numeric_alias)


# room left in a name for the number appended when it is taken (" " + six digits)
NAME_SUFFIX = 7


class _ProbeSpace:
    """Tell-message: is there room on the disk again?"""


class QuotaReached(Exception):
    """A user holds as many open reservations (reserved, in no meeting yet) as the integration
    allows; the reply to that user's reservation in place of a record."""

    def __init__(self, user: str, held: int, cap: int) -> None:
        super().__init__(f"{user} holds {held} open reservations (at most {cap})")
        self.user = user
        self.held = held
        self.cap = cap


class AliasAllocator(SupervisedChild):
    role = "allocator"

    def setup(self) -> None:
        self.renderer = self.integ.renderer()
        settings: dict[str, Any] = {
            "index": self.ctx.alias_index,
            "clock": self.ctx.clock,
            "rng": self.ctx.rng,
            "reservation_ttl": timedelta(days=self.integ.reservation_ttl_days),
            "horizon": timedelta(days=self.integ.booking_horizon_days),
        }
        try:
            self.store: StoreWrites
            if self.ctx.shared is not None:  # fenced by this instance's lease
                records = self.ctx.shared.records_for(self.integ.name)
                self.store = _ServiceDatabaseStore(records, **settings)
            else:
                self.store = _ServiceStore(self.ctx.store_dir(self.integ.name), **settings)
        except StoreCorruptError as exc:
            # refuse to run on it, change nothing, and tell the admin what to do
            self.ctx.alarms.raise_(self.integ.name, CORRUPT_ALARM, str(exc))
            raise
        self.ctx.alarms.clear(self.integ.name, CORRUPT_ALARM)
        self._pending_replies: list[tuple[Request, Any]] = []
        self._allocated = self.ctx.metrics.aliases_allocated.labels(self.integ.name)
        spec = self.integ.single_use
        self._spec = (spec.alias_prefix, spec.alias_suffix_length, spec.alias_domain)
        self._space_used = self.ctx.metrics.alias_space_used.labels(self.integ.name)
        self._space_low: bool | None = None  # unknown: the first look raises or clears
        self._settings = room_settings(self.integ)
        self._publish_all()
        # The loaded store and its published index are millions of long-lived objects; left in
        # the collected generations, every full GC pass walks them all (tens of ms, on the
        # event loop's hot paths too).
        gc.freeze()
        self._publish()
        self._watch_space()
        self._full = False  # the disk refused a write and no probe has found room since
        self._probing = False
        self._swept = (self.ctx.clock(), uptime())  # when the last sweep ran (wall, boot time)
        self.ctx.scheduler.call_later(self.ctx.sweep_interval, self._tell_sweep)

    def teardown(self) -> None:
        store = getattr(self, "store", None)
        if store is not None:
            self._flush_replies()
            store.close()
            self.store = None  # type: ignore[assignment]

    def _tell_sweep(self) -> None:
        self.actor_ref.tell(Sweep())

    def _publish_all(self) -> None:
        """Every alias this integration ever handed out, to the policy index: the active ones
        as they are, the archived ones as refused."""
        rooms = [self._room(record) for record in self.store.records()]
        rooms.extend(
            Room(alias_id, info.alias, info.numeric_alias, "archived", self._settings)
            for alias_id, info in self.store.archived_aliases()
            if info.alias or info.numeric_alias
        )
        self.store.take_changes()
        self.ctx.alias_index.publish(rooms)
        self.ctx.alias_index.mark_loaded(self.integ.name)

    def _publish_changes(self) -> None:
        """What the last commit made durable, to the policy index (never before the commit)."""
        changed = self.store.take_changes()
        if changed:
            self.ctx.alias_index.publish(self._room(record) for record in changed)
            if self.integ.pexip.mode == "management_api":
                self._poke_provisioner()
            self._watch_space()

    def _watch_space(self) -> None:
        """How full the alias range is, for the gauge and the alias_space_low alarm (O(1):
        it follows every commit that adds aliases)."""
        prefix, digits, _ = self._spec
        size = 10**digits
        ratio = self.store.aliases_taken() / size
        self._space_used.set(ratio)
        low = ratio >= ALIAS_SPACE_LOW_AT
        if low == self._space_low:
            return
        self._space_low = low
        if low:
            self.ctx.alarms.raise_(
                self.integ.name,
                ALIAS_SPACE_LOW,
                f"{ratio:.0%} of the {size:,} aliases {prefix!r} + {digits} digits can produce "
                "are used up (archived ones are never handed out again): lengthen "
                "[integrations.single_use] alias_suffix_length before reservations fail",
            )
        else:
            self.ctx.alarms.clear(self.integ.name, ALIAS_SPACE_LOW)

    def _poke_provisioner(self) -> None:
        """Conferences follow the store soon after a change (the provisioner coalesces)."""
        # starting or restarting: its first pass reads everything anyway
        with contextlib.suppress(ActorUnavailable, pykka.ActorDeadError):
            self.ctx.registry.get(self.integ.name, "provisioner").tell(Poke())

    def _room(self, record: Record) -> Room:
        return room_of(record, self._settings)

    def _publish(self) -> None:
        stats = self.store.stats()
        self.ctx.metrics.scheduled_conferences.labels(self.integ.name).set(stats.bound)

    # --- meeting processing (asked by the poller, in the poller's thread) ---------------------

    def process(self, meetings: Sequence[tuple[Meeting, str]], now: datetime) -> list[Step]:
        """Handle a batch of (meeting, inbox item id): each planned by answers.plan on the
        store's view and its action applied before the next is planned; one fsync for all."""
        steps = [self._process_one(meeting, item_id, now) for meeting, item_id in meetings]
        self._commit()
        self._publish()
        return steps

    def _commit(self) -> None:
        """Commit, or, when the disk refuses, restart from what is on disk: memory may be
        ahead of it, and nothing may be acknowledged from memory alone."""
        try:
            self.store.commit()
        except StorageFullError as exc:  # taken back: memory is what is on disk
            raise self._storage_full(exc) from exc
        except StoreBrokenError:
            self.actor_ref.tell(Crash())
            raise
        self._publish_changes()

    def _process_one(self, meeting: Meeting, item_id: str, now: datetime) -> Step:
        try:
            state = self.store.state_for(meeting.token, meeting.uid, self._spec)
            step = answers.plan(self.integ, self.renderer, meeting, state, now, item_id)
        except Exception:  # say, a stored schedule that no longer reads: this meeting's error
            log.exception("handling %s failed", meeting.uid[:200])
            return self._failed(meeting, item_id)
        action = step.decision.action
        if action.kind == "none":
            return step
        if step.fields.get("name"):
            step = replace(step, fields={**step.fields, "name": self._unique_name(step, action)})
        try:
            self.store.apply(action, step.fields)
        except StorageFullError as exc:  # the whole batch was taken back: it waits for room
            raise self._storage_full(exc) from exc
        except Exception:  # a store refusal becomes a general_error, never a crash loop
            log.exception("applying %s failed", action.kind)
            return self._failed(meeting, item_id)
        if action.kind == "bind_new":
            self._allocated.inc()
        return step

    def _unique_name(self, step: Step, action: Any) -> str:
        """The rendered name within Pexip's limit and used by no other conference of the
        service or of Pexip's own services (a number appended, as Pexip does); the store
        keeps an existing conference's first name and makes new ones unique within it."""
        base = name = clip(str(step.fields["name"]), FIELD_MAX - NAME_SUFFIX)
        alias_id = action.alias_id or ""
        index = self.ctx.alias_index
        while index.name_taken(name, self.integ.name, alias_id):
            name = f"{base} {random.randrange(10**6):06d}"
        return name

    def _failed(self, meeting: Meeting, item_id: str) -> Step:
        """The general_error step; when even its decline cannot be rendered, the decision
        without messages (counted and logged; nothing is sent)."""
        detail = traceback.format_exc()
        try:
            return answers.failed(self.integ, self.renderer, meeting, detail, item_id)
        except Exception:
            log.exception("cannot render a general_error decline either")
            return Step(meeting, general_error(meeting.correlation_id, detail), {}, ())

    # --- add-in reservations and housekeeping ----------------------------------------------------

    def _reserve_for(self, user: str) -> Record | QuotaReached:
        """One alias for `user` ("": no quota applies), or QuotaReached when they already hold
        as many open reservations as allowed: counted by the store's index, O(1) however
        much it holds. Not durable until the next commit."""
        spec = self.integ.single_use
        cap = spec.max_open_reservations_per_user
        if user and cap:
            held = self.store.open_reservations(user)
            if held >= cap:
                return QuotaReached(user, held, cap)
        return self.store.reserve(
            spec.alias_prefix, spec.alias_suffix_length, spec.alias_domain, user=user or None
        )

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Crash):
            raise StoreBrokenError("the store failed a write; restarting to reload it")
        if isinstance(message, Sweep):
            self._sweep()
            self.ctx.scheduler.call_later(self.ctx.sweep_interval, self._tell_sweep)
            return None
        if isinstance(message, _ProbeSpace):
            self._probe_space()
            return None
        if isinstance(message, Request):
            self._handle_request(message)
            return None
        return None

    def _sweep(self) -> None:
        """Expire and archive what is past, unless the wall clock ran ahead of the time that
        really passed since the last sweep (then nothing, and the log says why)."""
        now, up = self.ctx.clock(), uptime()
        last, last_up = self._swept
        ahead = (now - last) - timedelta(seconds=up - last_up)
        if ahead > SWEEP_CLOCK_MARGIN:
            log.warning(
                "the clock moved %s further ahead than the time that passed since %s (the last "
                "sweep, or the start): not sweeping, so that a wrong clock cannot expire "
                "reservations or archive meetings the right one still needs; if the new time "
                "is right, restart the service to accept it",
                f"{ahead / timedelta(days=1):.1f}".removesuffix(".0") + " days",
                last.isoformat(timespec="seconds"),
                extra={"integration": self.integ.name},
            )
            return
        self._swept = (now, up)
        try:
            moved = self.store.sweep(timedelta(minutes=self.integ.single_use.join_after_minutes))
        except StorageFullError as exc:
            self._storage_full(exc)
            moved = 0
        self._publish_changes()
        if moved:
            log.info("archived %d aliases", moved, extra={"integration": self.integ.name})
        self._publish()

    # --- a full disk -----------------------------------------------------------------------------

    def _storage_full(self, exc: StorageFullError) -> StorageFull:
        """The store took back every write since its last commit: so were the reservations
        waiting for that commit, whose requests are answered now. The alarm stays until a
        probe finds room."""
        database = isinstance(exc, StorageUnavailableError)
        if not self._full:
            self._full = True
            if database:
                self.ctx.alarms.raise_(
                    self.integ.name,
                    STORAGE_UNAVAILABLE,
                    f"the shared database did not take a commit ({exc}): reservations are "
                    "refused (503 storage_unavailable) and meetings wait until it answers",
                )
            else:
                self.ctx.alarms.raise_(
                    self.integ.name,
                    STORAGE_FULL,
                    f"the disk is full ({exc}): reservations are refused (503 storage_full) "
                    "and meetings wait until there is room again",
                )
        # asking again may work once the next probe found room (or the database answering)
        error = (
            StorageFull(
                "the booking service's database does not answer; try again later",
                "storage_unavailable",
                retry_after=SPACE_PROBE_SECONDS,
            )
            if database
            else StorageFull(
                "the booking service's disk is full; try again later",
                retry_after=SPACE_PROBE_SECONDS,
            )
        )
        waiting, self._pending_replies = self._pending_replies, []
        deliver((request, None, error) for request, _ in waiting)
        if not self._probing:
            self._probing = True
            self.ctx.scheduler.call_later(SPACE_PROBE_SECONDS, self._tell_probe)
        return error

    def _tell_probe(self) -> None:
        with contextlib.suppress(pykka.ActorDeadError):
            self.actor_ref.tell(_ProbeSpace())

    def _probe_space(self) -> None:
        self._probing = False
        if not self._full:
            return
        if not self.store.has_room():
            self._probing = True
            self.ctx.scheduler.call_later(SPACE_PROBE_SECONDS, self._tell_probe)
            return
        self._full = False
        self.ctx.alarms.clear(self.integ.name, STORAGE_FULL)
        self.ctx.alarms.clear(self.integ.name, STORAGE_UNAVAILABLE)
        log.info("the store takes writes again", extra={"integration": self.integ.name})

    def _handle_request(self, request: Request) -> None:
        """Every ask of this actor: the poller's meetings (answered once durable), an admin's
        acts, and reservations from the event loop, in group commit: reserved now, answered
        after the fsync that covers every request waiting in the inbox."""
        try:
            if isinstance(request.payload, Reserve):
                try:
                    results = [self._reserve_for(user) for user in request.payload.users]
                except StorageFullError as exc:
                    request.reply(None, self._storage_full(exc))
                    return
                self._pending_replies.append((request, results))

            elif isinstance(request.payload, ProcessMeetings):
                request.reply(self.process(request.payload.meetings, request.payload.now), None)
            elif isinstance(request.payload, FindAliases):
                request.reply(self._find(request.payload), None)
            elif isinstance(request.payload, DeleteAlias):
                request.reply(self._delete(request.payload), None)
            elif isinstance(request.payload, ResendInstructions):
                request.reply(self._resend(request.payload), None)
            else:
                request.reply(None, ValueError(f"unknown request {request.payload!r}"))
        except Exception as exc:
            request.reply(None, exc)
        if self.actor_inbox.empty():
            self._flush_replies()

    # --- admin acts (asked from the event loop through the bridge) ------------------------------

    def _find(self, ask: FindAliases) -> list[Record]:
        return alias_admin.search(self.store.records(), ask.query, ask.day, ask.limit)

    def _delete(self, ask: DeleteAlias) -> Record | None:
        """Deleted and durable first, then published (the policy endpoint refuses it, the
        provisioner removes its conference), then the organizer's notice queued."""
        done = alias_admin.delete(
            self.store,
            self.integ,
            self.renderer,
            ask.alias,
            ask.by,
            self.ctx.clock(),
            unused_only=ask.unused_only,
        )
        if done is None:
            return None
        if done.changed:
            self._commit()
            self._publish()
        if done.notice is not None:
            self._queue(done.notice)
        alias = done.record.get("alias")
        log.warning(
            "alias %s deleted by %s",
            alias,
            ask.by,
            extra={"integration": self.integ.name, "alias": alias, "by": ask.by},
        )
        return done.record

    def _resend(self, ask: ResendInstructions) -> str | None:
        found = alias_admin.resend(
            self.store, self.integ, self.renderer, ask.alias, self.ctx.clock()
        )
        if found is None:
            return None
        record, notice = found
        self._queue(notice)
        log.info(
            "joining instructions of %s resent to %s by %s",
            record.get("alias"),
            record.get("organizer_email"),
            ask.by,
            extra={"integration": self.integ.name, "alias": record.get("alias"), "by": ask.by},
        )
        return notice.id

    def _queue(self, message: Outgoing) -> None:
        """Durably queued with the notifier before the admin is told it is done."""
        notifier = self.ctx.registry.get(self.integ.name, "notifier")
        ask(notifier, Enqueue([message]), timeout=30)

    def _flush_replies(self) -> None:
        """Commit, publish, then answer: a Pexip node asked about an alias right after the
        add-in got it finds it in the policy index."""
        pending, self._pending_replies = self._pending_replies, []
        if not pending:
            return
        try:
            self.store.commit()
        except StorageFullError as exc:  # taken back: none of them has an alias
            self._pending_replies = pending
            self._storage_full(exc)
            return
        except Exception as exc:
            deliver((request, None, exc) for request, _ in pending)
            raise
        self._allocated.inc(
            sum(not isinstance(r, QuotaReached) for _, results in pending for r in results)
        )
        try:
            self._publish_changes()
        finally:  # what is on disk is answered, whatever publishing did
            deliver((request, result, None) for request, result in pending)
