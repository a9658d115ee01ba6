"""Provisioner (mode "management_api"): makes the conferences on Pexip match the store. A bound
meeting's conference is created `provision_lead_minutes` before its first window opens (Pexip
replicates configuration to the Conferencing Nodes in about a minute) and deleted after its last
window closes; a cancelled, released or deleted alias loses its conference.

It reconciles rather than replays a queue: what should exist is derived from the store (durable
before anything is acknowledged) through the published alias index, and what exists is read back
from Pexip by tag, so a crash, a restart or an outage loses nothing: the next pass does what is
missing. Conferences are tagged `vmrsched/<integration>/<alias id>`; Pexip ignores filters it
does not know, so every listed conference's tag is checked here before anything is deleted, and
conferences without our tag are never touched."""

from __future__ import annotations

import logging
import random
import time
from datetime import timedelta
from typing import Any

from vmrsched import recurrence
from vmrsched.actors.child import SupervisedChild
from vmrsched.actors.messages import Poke, Reconcile
from vmrsched.actors.supervision import Backoff
from vmrsched.pexip.management import ManagementClient, PexipRefused, PexipUnavailable
from vmrsched.pexip.policy import Room
from vmrsched.telemetry import PEXIP_REFUSED, PEXIP_UNREACHABLE

log = logging.getLogger("vmrsched.provisioner")
FULL_EVERY = 300.0  # seconds between full re-reads of Pexip's conferences
REFUSED_RETRY = 600.0  # a refused conference is tried again after this long (config may change)
POKE_DELAY = 1.0  # a burst of commits becomes one pass


class Provisioner(SupervisedChild):
    role = "provisioner"

    def setup(self) -> None:
        px = self.integ.pexip
        password = px.management_password.reveal() if px.management_password else ""
        requests_total = self.ctx.metrics.pexip_requests

        def count(operation: str, result: str) -> None:
            requests_total.labels(self.integ.name, operation, result).inc()

        self.client = ManagementClient(px, password, on_request=count)
        self.prefix = f"vmrsched/{self.integ.name}/"
        self.lead = timedelta(minutes=px.provision_lead_minutes)
        self.before = timedelta(minutes=self.integ.single_use.join_before_minutes)
        self.after = timedelta(minutes=self.integ.single_use.join_after_minutes)
        self.actual: dict[str, dict[str, Any]] | None = None  # alias id -> conference
        self.refused: dict[str, float] = {}  # alias id -> monotonic time to try again
        self.failures = 0
        self.backoff = Backoff(2.0, self.ctx.policy.mailbox_max)
        self.last_full = 0.0
        self.poked = False
        self.theme_uri: str | None = None
        self.rng = random.Random()
        self.actor_ref.tell(Reconcile(full=True))

    def teardown(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            client.close()

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Poke):
            if not self.poked:
                self.poked = True
                self.ctx.scheduler.call_later(POKE_DELAY, self._tell_reconcile)
        elif isinstance(message, Reconcile):
            self.poked = False
            self._pass(message.full or time.monotonic() - self.last_full > FULL_EVERY)
        return None

    def _tell_reconcile(self, full: bool = False) -> None:
        self.actor_ref.tell(Reconcile(full))

    def _pass(self, full: bool) -> None:
        try:
            done = self.reconcile(full or self.actual is None)
        except PexipUnavailable as exc:
            self.failures += 1
            self.actual = None  # read everything back once it answers again
            delay = exc.retry_after or self.backoff.delay(self.failures)
            self.ctx.alarms.raise_(self.integ.name, PEXIP_UNREACHABLE, str(exc))
            log.warning(
                "Pexip management API unavailable, retrying in %.0fs: %s",
                delay,
                exc,
                extra={"integration": self.integ.name},
            )
            self.ctx.scheduler.call_later(delay, lambda: self._tell_reconcile(True))
            return
        if self.failures:
            self.failures = 0
            self.ctx.alarms.clear(self.integ.name, PEXIP_UNREACHABLE)
        if not any(until > time.monotonic() for until in self.refused.values()):
            self.ctx.alarms.clear(self.integ.name, PEXIP_REFUSED)
        if done:
            log.info(
                "Pexip: %d conferences created, %d deleted, %d updated",
                *done,
                extra={"integration": self.integ.name},
            )
        self.ctx.scheduler.call_later(self.ctx.provision_interval, self._tell_reconcile)

    # --- one pass ----------------------------------------------------------------------------

    def reconcile(self, full: bool) -> tuple[int, int, int] | None:
        """Create what is missing, delete what is over, update changed descriptions. Returns
        the counts when something was done."""
        if full or self.actual is None:
            self.actual = self._read_back()
            self.last_full = time.monotonic()
        now = self.ctx.clock()
        wanted = {
            r.alias_id: r for r in self.ctx.alias_index.rooms(self.integ.name) if self._due(r, now)
        }
        created = deleted = updated = 0
        for alias_id, conference in list(self.actual.items()):
            if alias_id not in wanted:
                self.client.delete(conference["resource_uri"])
                del self.actual[alias_id]
                deleted += 1
        clock = time.monotonic()
        for alias_id, room in wanted.items():
            existing = self.actual.get(alias_id)
            if existing is not None:
                if existing.get("description", "") != room.description:
                    self.client.update(existing["resource_uri"], {"description": room.description})
                    existing["description"] = room.description
                    updated += 1
                continue
            if self.refused.get(alias_id, 0.0) > clock:
                continue
            if self._create(room):
                created += 1
        return (created, deleted, updated) if created or deleted or updated else None

    def _due(self, room: Room, now: Any) -> bool:
        if room.status != "bound" or room.schedule is None:
            return False
        try:
            return recurrence.live_at(room.schedule, now, self.before + self.lead, self.after)
        except recurrence.RecurrenceError:
            return False

    def _read_back(self) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        for conference in self.client.list("conference", tag__startswith=self.prefix):
            tag = str(conference.get("tag") or "")
            if tag.startswith(self.prefix):  # never trust a filter Pexip may have ignored
                found[tag[len(self.prefix) :]] = conference
        return found

    def _create(self, room: Room) -> bool:
        assert self.actual is not None
        fields: dict[str, Any] = {
            "name": room.name or room.alias,
            "service_type": "conference",
            "description": room.description,
            "tag": self.prefix + room.alias_id,
            "aliases": [{"alias": a} for a in dict.fromkeys((room.alias, room.numeric_alias)) if a],
        }
        theme = self._theme()
        if theme:
            fields["ivr_theme"] = theme
        for _ in range(5):
            try:
                uri = self.client.create("conference", fields)
            except PexipRefused as exc:
                if exc.about("name"):  # a duplicate name: append a random number, as Pexip's own
                    fields["name"] = f"{room.name or room.alias} {self.rng.randrange(10**6):06d}"
                    continue
                self.refused[room.alias_id] = time.monotonic() + REFUSED_RETRY
                self.ctx.alarms.raise_(self.integ.name, PEXIP_REFUSED, str(exc))
                log.error(
                    "Pexip refused the conference of %s: %s",
                    room.alias,
                    exc,
                    extra={"integration": self.integ.name, "alias": room.alias},
                )
                return False
            self.actual[room.alias_id] = {**fields, "resource_uri": uri}
            self.refused.pop(room.alias_id, None)
            return True
        return False

    def _theme(self) -> str | None:
        name = self.integ.single_use.theme
        if not name:
            return None
        if self.theme_uri is None:
            self.theme_uri = self.client.find_uri("ivr_theme", name) or ""
            if not self.theme_uri:
                log.warning("Pexip has no theme named %r; conferences use the default", name)
        return self.theme_uri or None
