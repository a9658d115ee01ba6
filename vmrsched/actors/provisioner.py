"""Provisioner: makes the conferences on Pexip match the store (mode "management_api"), and, in
any mode where the management API is configured, reads the names and aliases of Pexip's own
services so that none is handed out again.

Joinability is exact per occurrence: a bound meeting's conference exists from
`provision_lead_minutes` before each occurrence's window (start - join_before; Pexip replicates
configuration to the Conferencing Nodes in about a minute) until that window closes
(end + join_after), and not between occurrences; moved and cancelled occurrences count as the
schedule says. The next pass is timed to the next opening or closing. A cancelled, released or
deleted alias loses its conference.

It reconciles rather than replays a queue: what should exist is derived from the store (durable
before anything is acknowledged) through the published alias index, and what exists is read back
from Pexip, so a crash, a restart or an outage loses nothing: the next pass does what is
missing. Conferences are tagged `vmrsched/<integration>/<alias id>`; Pexip ignores filters it
does not know, so every listed conference's tag is checked here, and conferences without our
tag are never touched. Nothing is deleted before the allocator has published its whole store
(a restart, a reload or a takeover must not cut off calls in progress); a second conference
carrying one alias's tag is removed like a stray. A conference of ours that differs from the
store (a hand edit on the Management Node) is put back, fields and aliases alike: the store is
the one truth, and an alias dropped by hand would silently cut off the room's phone route.

A Pexip problem never takes the integration down: unreachable, busy or refusing to list, the
provisioner raises an alarm and tries again with backoff (one timer: changes made meanwhile
are picked up by the one pass after recovery). A refused conference is logged with its alias
and tried again only after REFUSED_RETRY."""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import requests

from vmrsched.actors.child import SupervisedChild
from vmrsched.actors.messages import Poke, Reconcile
from vmrsched.actors.outage import Outage
from vmrsched.actors.supervision import Backoff
from vmrsched.pexip.conference import alias_changes, differences, numbered, ours
from vmrsched.pexip.management import (
    ManagementClient,
    PexipRefused,
    PexipUnavailable,
    alias_strings,
)
from vmrsched.pexip.policy import Room, clip, non_idp
from vmrsched.proxies import use_rule
from vmrsched.rules import recurrence
from vmrsched.telemetry import PEXIP_REFUSED, PEXIP_UNREACHABLE

log = logging.getLogger("vmrsched.provisioner")
FULL_EVERY = 300.0  # seconds between full re-reads of Pexip's conferences
REFUSED_RETRY = 600.0  # a refused conference is tried again after this long (config may change)
POKE_DELAY = 1.0  # a burst of commits becomes one pass
NOT_LOADED_RETRY = 1.0  # the allocator has not published its store yet: look again this soon
OUR_TAGS = "vmrsched/"
DUPLICATE = "already exists"  # how Pexip words a uniqueness refusal


@dataclass(frozen=True)
class _Tick:
    """The provisioner's one timer fired; stale generations are ignored."""

    generation: int
    full: bool = False


class Provisioner(SupervisedChild):
    role = "provisioner"

    def setup(self) -> None:
        px = self.integ.pexip
        password = px.management_password.reveal() if px.management_password else ""
        requests_total = self.ctx.metrics.pexip_requests

        def count(operation: str, result: str) -> None:
            requests_total.labels(self.integ.name, operation, result).inc()

        session = use_rule(requests.Session(), self.integ.advanced.disable_web_proxy)
        self.client = ManagementClient(px, password, session=session, on_request=count)
        self.provisions = px.mode == "management_api"  # otherwise: only reads Pexip's names
        self.prefix = f"vmrsched/{self.integ.name}/"
        self.lead = timedelta(minutes=px.provision_lead_minutes)
        self.before = timedelta(minutes=self.integ.single_use.join_before_minutes)
        self.after = timedelta(minutes=self.integ.single_use.join_after_minutes)
        self.actual: dict[str, dict[str, Any]] | None = None  # alias id -> conference
        self.extra: list[dict[str, Any]] = []  # more conferences with a tag already seen
        self.refused: dict[str, float] = {}  # alias id -> monotonic time to try again
        # Pexip unreachable, busy or refusing to list: pexip_unreachable from the first failed
        # pass, passes backing off from two seconds
        self.outage = Outage(
            self.ctx.alarms,
            self.integ.name,
            PEXIP_UNREACHABLE,
            Backoff(2.0, self.ctx.policy.mailbox_max),
            "Pexip's management API",
        )
        self.last_full = 0.0
        self.poked = False
        self.armed = 0  # the one timer's generation (a newer arming cancels an older)
        self.theme_uri: str | None = None
        self.group_uri: str | None = None
        self.rng = random.Random()
        self.actor_ref.tell(Reconcile(full=True))

    def teardown(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            client.close()

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Poke):
            # while backing off, the retry already scheduled picks the change up
            if not self.poked and not self.outage.down and self.provisions:
                self.poked = True
                self.ctx.scheduler.call_later(POKE_DELAY, self._tell_reconcile)
        elif isinstance(message, _Tick):
            if message.generation == self.armed:
                self._pass(message.full)
        elif isinstance(message, Reconcile):
            self.poked = False
            if self.outage.down and not message.full:
                return None  # the retry timer runs the next pass
            self._pass(message.full)
        return None

    def _tell_reconcile(self) -> None:
        self.actor_ref.tell(Reconcile(False))

    def _schedule(self, delay: float, full: bool = False) -> None:
        """(Re)arm the one timer: an earlier arming no longer counts."""
        self.armed += 1
        tick = _Tick(self.armed, full)
        self.ctx.scheduler.call_later(max(delay, 0.01), lambda: self.actor_ref.tell(tick))

    def _pass(self, full: bool) -> None:
        full = full or self.actual is None or time.monotonic() - self.last_full > FULL_EVERY
        try:
            done = self.reconcile(full)
        except (PexipUnavailable, PexipRefused) as exc:
            # a refused list (say, a proxy's error page) is Pexip's problem too: never ours
            self.actual = None  # read everything back once it answers again
            retry = exc.retry_after if isinstance(exc, PexipUnavailable) else None
            delay = self.outage.failed(str(exc), retry)
            log.warning(
                "Pexip management API unavailable, retrying in %.0fs: %s",
                delay,
                exc,
                extra={"integration": self.integ.name},
            )
            self._schedule(delay, full=True)
            return
        self.outage.recovered()
        if not any(until > time.monotonic() for until in self.refused.values()):
            self.ctx.alarms.clear(self.integ.name, PEXIP_REFUSED)
        if done:
            log.info(
                "Pexip: %d conferences created, %d deleted, %d updated",
                *done,
                extra={"integration": self.integ.name},
            )
        if not self.provisions:
            self._schedule(FULL_EVERY, full=True)
        elif not self.ctx.alias_index.loaded(self.integ.name):
            self._schedule(NOT_LOADED_RETRY)
        else:
            self._schedule(self._next_delay())

    # --- one pass ----------------------------------------------------------------------------

    def reconcile(self, full: bool) -> tuple[int, int, int] | None:
        """Create what is missing, delete what is over (once the whole store is published),
        put back what differs from the store (a changed description, a hand edit). Returns
        the counts when something was done."""
        if full or self.actual is None:
            self.actual = self._read_back()
            self.last_full = time.monotonic()
        if not self.provisions:
            return None
        now = self.ctx.clock()
        index = self.ctx.alias_index
        loaded = index.loaded(self.integ.name)
        wanted = {r.alias_id: r for r in index.rooms(self.integ.name) if self._due(r, now)}
        created = deleted = updated = 0
        if loaded:  # until then, what is missing from the index may be a live booking's
            for conference in self.extra:
                self.client.delete(conference["resource_uri"])
                deleted += 1
            self.extra = []
            for alias_id, conference in list(self.actual.items()):
                if alias_id not in wanted:
                    self.client.delete(conference["resource_uri"])
                    del self.actual[alias_id]
                    deleted += 1
        clock = time.monotonic()
        for alias_id, room in wanted.items():
            if self.refused.get(alias_id, 0.0) > clock:
                continue
            existing = self.actual.get(alias_id)
            if existing is not None:
                updated += self._restore(room, existing)
            elif self._create(room):
                created += 1
        return (created, deleted, updated) if created or deleted or updated else None

    def _due(self, room: Room, now: datetime) -> bool:
        if room.status != "bound" or room.schedule is None:
            return False
        try:
            return recurrence.live_at(room.schedule, now, self.before + self.lead, self.after)
        except recurrence.RecurrenceError:
            return False

    def _next_delay(self) -> float:
        """Seconds until the next pass: the provisioning interval, or sooner when some
        occurrence's conference is due to be created or removed before that."""
        interval = self.ctx.provision_interval
        now = self.ctx.clock()
        horizon = now + timedelta(seconds=interval)
        soonest = horizon
        opens = self.before + self.lead
        for room in self.ctx.alias_index.rooms(self.integ.name):
            if room.status != "bound" or room.schedule is None:
                continue
            moved = len(room.schedule.overrides)  # yielded first, in any order
            try:
                occurrences = recurrence.occurrences_after(room.schedule, now - self.after)
                for n, occ in enumerate(occurrences):
                    start, end = occ.start - opens, occ.end + self.after
                    if now < start < soonest:
                        soonest = start
                    if now <= end < soonest:
                        soonest = end + timedelta(microseconds=1)
                    if start > horizon and n >= moved:
                        break
            except recurrence.RecurrenceError:
                continue
        return (soonest - now).total_seconds()

    def _read_back(self) -> dict[str, dict[str, Any]]:
        """Pexip's conferences: ours by alias id (one each; more with one tag go to `extra`),
        and the names and aliases of every service that is not one of ours and of every
        registered device, for the index."""
        found: dict[str, dict[str, Any]] = {}
        extra: list[dict[str, Any]] = []
        names: list[str] = []
        aliases: list[str] = []
        for conference in self.client.list("conference"):
            tag = str(conference.get("tag") or "")
            if not tag.startswith(OUR_TAGS):  # Pexip's own service
                names.append(str(conference.get("name", "")))
                aliases.extend(alias_strings(conference))
                continue
            if not tag.startswith(self.prefix):
                continue
            alias_strings(conference)  # a conference to compare must be in Pexip's shape
            alias_id = tag[len(self.prefix) :]
            kept = found.get(alias_id)
            if kept is None:
                found[alias_id] = conference
            elif self._better(conference, kept, alias_id):
                found[alias_id] = conference
                extra.append(kept)
            else:
                extra.append(conference)
        self.extra = extra
        # a device registered to Pexip owns its alias too: a call to it rings the device, so a
        # room handed out with that alias could never be joined
        aliases.extend(str(d.get("alias") or "") for d in self.client.list("device"))
        self.ctx.alias_index.set_foreign(self.integ.name, names, aliases)
        return found

    def _better(self, one: dict[str, Any], other: dict[str, Any], alias_id: str) -> bool:
        """Of two conferences with one tag, keep the one that routes the room's alias."""
        room = next(
            (r for r in self.ctx.alias_index.rooms(self.integ.name) if r.alias_id == alias_id),
            None,
        )
        if room is None:
            return False

        def routes(conference: dict[str, Any]) -> bool:
            held = {str(a.get("alias", "")).casefold() for a in conference.get("aliases") or []}
            return room.alias.casefold() in held

        return routes(one) and not routes(other)

    def _wanted(self, room: Room) -> dict[str, Any]:
        """The fields of the room's conference the service owns (aliases aside): what is
        created, and what a reconcile puts back where Pexip holds something else."""
        fields: dict[str, Any] = {
            "name": clip(room.name or room.alias),
            "service_type": "conference",
            "description": clip(room.description),
            "tag": clip(self.prefix + room.alias_id),
            "ivr_theme": self._uri("ivr_theme", self.integ.single_use.theme),
            "host_identity_provider_group": None,
        }
        group = self._uri("identity_provider_group", self.integ.single_use.identity_provider_group)
        if group:
            # as the policy answer: hosts authenticate with the group's identity providers,
            # other devices are let in (or not) as configured
            fields["host_identity_provider_group"] = group
            fields["non_idp_participants"] = non_idp(self.integ.single_use.other_participants)
        return fields

    @staticmethod
    def _aliases(room: Room) -> list[str]:
        return [a for a in dict.fromkeys((room.alias, room.numeric_alias)) if a]

    def _create(self, room: Room) -> bool:
        assert self.actual is not None
        base = clip(room.name or room.alias)
        fields = self._wanted(room)
        fields["aliases"] = [{"alias": a} for a in self._aliases(room)]
        for key in ("ivr_theme", "host_identity_provider_group"):
            if fields[key] is None:
                del fields[key]  # Pexip's default: none
        for _ in range(5):
            try:
                uri = self.client.create("conference", fields)
            except PexipRefused as exc:
                if exc.about("name") and DUPLICATE in str(exc.fields.get("name")):
                    # a name another service took since we checked: a number, as Pexip's own
                    fields["name"] = numbered(base, self.rng.randrange(10**6))
                    continue
                self._refused(room, str(exc))
                return False
            self.actual[room.alias_id] = {**fields, "resource_uri": uri}
            self.refused.pop(room.alias_id, None)
            if fields["name"] != room.name:
                self.ctx.alias_index.set_pexip_name(self.integ.name, room.alias_id, fields["name"])
            return True
        self._refused(room, "every name tried is taken on Pexip")
        return False

    def _restore(self, room: Room, existing: dict[str, Any]) -> int:
        """Put the room's existing conference back in line with the store: every owned field
        and both aliases (a hand edit on Pexip, a description changed since). 1 when
        something was changed. A refusal (an alias taken meanwhile) is the room's, as for a
        create."""
        wanted = self._wanted(room)
        uri = str(existing["resource_uri"])
        changed = differences(existing, wanted)
        held = str(existing.get("name", ""))
        if not ours(held, wanted["name"]):
            changed["name"] = wanted["name"]
        aliases = alias_changes(existing, self._aliases(room))
        if not changed and not aliases:
            if held != room.name:  # Pexip's name (numbered) is the one name served
                self.ctx.alias_index.set_pexip_name(self.integ.name, room.alias_id, held)
            return 0
        log.warning(
            "Pexip's conference of %s differs from the store (%s): put back",
            room.alias,
            ", ".join([*changed, *(["aliases"] if aliases else [])]),
            extra={"integration": self.integ.name, "alias": room.alias},
        )
        try:
            if changed:
                self._update(uri, changed, room)
                existing.update(changed)
            for extra in aliases.extra:
                self.client.delete(extra)
            for alias in aliases.missing:
                self.client.create("conference_alias", {"alias": alias, "conference": uri})
        except PexipRefused as exc:
            self.last_full = 0.0  # half done, perhaps: the next pass reads Pexip back
            self._refused(room, str(exc))
            return 0
        if aliases:
            existing["aliases"] = [{"alias": a} for a in self._aliases(room)]
        name = str(existing.get("name", ""))
        if name != room.name:
            self.ctx.alias_index.set_pexip_name(self.integ.name, room.alias_id, name)
        return 1

    def _update(self, uri: str, changed: dict[str, Any], room: Room) -> None:
        """PATCH the changed fields; a name taken meanwhile gets a number, as on create."""
        for _ in range(5):
            try:
                self.client.update(uri, changed)
                return
            except PexipRefused as exc:
                if "name" not in changed or not (
                    exc.about("name") and DUPLICATE in str(exc.fields.get("name"))
                ):
                    raise
                changed["name"] = numbered(room.name or room.alias, self.rng.randrange(10**6))
        raise PexipRefused("every name tried is taken on Pexip", 400, {})

    def _refused(self, room: Room, why: str) -> None:
        self.refused[room.alias_id] = time.monotonic() + REFUSED_RETRY
        self.ctx.alarms.raise_(self.integ.name, PEXIP_REFUSED, f"{room.alias}: {why}")
        log.error(
            "Pexip refused the conference of %s (tried again in %.0f s): %s",
            room.alias,
            REFUSED_RETRY,
            why,
            extra={"integration": self.integ.name, "alias": room.alias},
        )

    def _uri(self, resource: str, name: str) -> str | None:
        """The URI of a theme or identity provider group by name (looked up once)."""
        if not name:
            return None
        attr = "theme_uri" if resource == "ivr_theme" else "group_uri"
        found: str | None = getattr(self, attr)
        if found is None:
            found = self.client.find_uri(resource, name) or ""
            setattr(self, attr, found)
            if not found:
                log.warning(
                    "Pexip has no %s named %r; conferences are created without it",
                    resource.replace("_", " "),
                    name,
                    extra={"integration": self.integ.name},
                )
        return found or None
