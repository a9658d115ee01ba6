"""Which integrations run on this instance, when several share one database
(`[storage] backend = "postgresql"`).

`Ownership` is one actor per process. Every third of a lease it says this instance is alive,
renews the leases it holds, and takes free ones up to its fair share of the integrations (the
instances alive share them evenly; each prefers a different order, so two instances starting
together do not reach for the same ones). It gives up what is over its share one at a time, so
the integrations spread again when an instance joins, and takes over an instance's
integrations once their leases expire after it died.

What it decides reaches the service supervisor as `Gained` (start the integration, its store
fenced by the new lease) and `Lost` (stop it at once: another instance owns it or will). A
lease that could not be renewed is given up before it can expire here, so that this instance
stops before another may start."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
import pykka

from vmrsched.actors.bridge import answer
from vmrsched.actors.inbox import Actor
from vmrsched.actors.messages import ReleaseAll, Request, StopTaking
from vmrsched.postgres.connection import Connect
from vmrsched.postgres.leases import Lease, LeaseLost, Leases, NameInUse, fair_share
from vmrsched.postgres.records import Records
from vmrsched.store import OwnershipLostError, StorageUnavailableError
from vmrsched.telemetry import INSTANCE_NAME_TAKEN, STORAGE_UNAVAILABLE, Alarms, Metrics

log = logging.getLogger("vmrsched.ownership")


@dataclass(frozen=True)
class Gained:
    """To the service supervisor: this instance owns the integration now; start it."""

    name: str


@dataclass(frozen=True)
class Lost:
    """To the service supervisor: this instance no longer owns the integration (or is about
    to give it up); stop it at once. `release`: give the lease up once stopped (a clean
    hand-over to another instance), rather than let it expire."""

    name: str
    release: bool = False
    # run by the supervisor once the integration stopped here (the lease handed over then)
    then: Callable[[], None] | None = None


@dataclass(frozen=True)
class _Tick:
    pass


@dataclass(frozen=True)
class _Release:
    name: str


@dataclass
class SharedStorage:
    """The shared database as the actors use it: connections, this instance's name, and the
    leases it holds now (the allocator fences its store's commits with its integration's)."""

    connect: Connect
    instance: str
    lease_seconds: float
    held: dict[str, Lease] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # whether the last round of lease work reached the database (readiness says so): not
    # before the first round, when what this instance runs is not known yet
    reachable: bool = False
    # where the other instances reach this one (`[storage] advertise_url`; heartbeats write it)
    url: str = ""
    # when this process run took the instance's name (leases.py: one run holds a name at a
    # time); None until the first heartbeat
    run: datetime | None = None
    # why this instance runs nothing though the database answers: another process run holds
    # its name (it was paused or cut off past a lease, and a new one took the name); empty
    # while it holds its name
    name_taken: str = ""

    def require_lease(self, name: str) -> Lease:
        """The lease this instance holds for the integration; OwnershipLostError when it holds
        none (nothing of it may be written unfenced)."""
        with self.lock:
            lease = self.held.get(name)
        if lease is None:
            raise OwnershipLostError(f"{name}: this instance ({self.instance}) holds no lease")
        return lease

    def records_for(self, name: str) -> Records:
        """The integration's records, fenced by the lease this instance holds for it."""
        records = Records(self.connect, name)
        records.lease = self.require_lease(name)
        return records

    def lease(self, name: str) -> Lease | None:
        with self.lock:
            return self.held.get(name)

    def owns(self, name: str) -> bool:
        with self.lock:
            return name in self.held

    def owned(self) -> list[str]:
        with self.lock:
            return sorted(self.held)


def preference(instance: str, name: str) -> str:
    """The order in which `instance` reaches for free integrations (rendezvous hashing): each
    instance its own order, the same every time."""
    return hashlib.sha256(f"{instance}\0{name}".encode()).hexdigest()


def plan(
    instance: str,
    wanted: Iterable[str],
    held: Iterable[str],
    holders: dict[str, Lease],
    instances: int,
) -> tuple[list[str], list[str]]:
    """(what to take, what to give up) this tick: free integrations up to the fair share, in
    this instance's order of preference; one beyond the share, if any, given up."""
    names = sorted(set(wanted))
    mine = sorted(n for n in held if n in names)
    share = fair_share(len(names), instances)
    free = [n for n in names if n not in holders and n not in mine]
    free.sort(key=lambda n: preference(instance, n))
    take = free[: max(0, share - len(mine))]
    surplus = sorted(mine, key=lambda n: preference(instance, n), reverse=True)
    give = surplus[:1] if len(mine) > share else []
    return take, give


class Ownership(Actor):
    def __init__(
        self,
        shared: SharedStorage,
        wanted: Callable[[], list[str]],
        tell: Callable[[Gained | Lost], None],
        schedule: Callable[[float, Callable[[], None]], None],
        metrics: Metrics | None = None,
        alarms: Alarms | None = None,
    ) -> None:
        super().__init__()
        self.shared = shared
        self.metrics = metrics or Metrics()
        self.alarms = alarms
        self.leases = Leases(
            shared.connect, shared.instance, shared.lease_seconds, shared.url, shared.run
        )
        self.wanted = wanted  # the configured integrations (a reload changes them)
        self.tell = tell
        self.schedule = schedule
        self.every = shared.lease_seconds / 3
        self._deadlines: dict[str, float] = {}  # local monotonic: renew before, or give up
        self._stopping = False
        self._stopping_soon = False

    def on_start(self) -> None:
        self._tick()

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, _Tick):
            self._tick()
        elif isinstance(message, _Release):
            self.release(message.name)
        elif isinstance(message, Request) and isinstance(message.payload, StopTaking):
            answer(message, self.stopping)
        elif isinstance(message, Request) and isinstance(message.payload, ReleaseAll):
            answer(message, self.release_all)
        return None

    def set_wanted(self, wanted: Callable[[], list[str]]) -> None:
        """The configured integrations changed (a reload)."""
        self.wanted = wanted

    def _tick(self) -> None:
        if self._stopping:
            return
        started = time.monotonic()
        try:
            self._step()
            self.shared.reachable = True
            if self.alarms is not None:
                self.alarms.clear("service", STORAGE_UNAVAILABLE)
        except NameInUse as exc:
            self.shared.reachable = True
            if self.alarms is not None:
                self.alarms.clear("service", STORAGE_UNAVAILABLE)
            self._name_taken(exc)
        except (psycopg.Error, StorageUnavailableError) as exc:
            self.shared.reachable = False
            log.warning("shared database: %s", exc)
            self.metrics.lease_renewals.labels("unreachable").inc()
            self._expire_unrenewed()
            if self.alarms is not None:  # for as long as it lasts, leases given up or not
                self.alarms.raise_(
                    "service",
                    STORAGE_UNAVAILABLE,
                    "the shared database does not answer: this instance runs no integration "
                    f"until it does ({type(exc).__name__})",
                )
        finally:
            self.metrics.database_seconds.observe(time.monotonic() - started)
            self.schedule(self.every, self._tell_tick)

    def _tell_tick(self) -> None:
        self.actor_ref.tell(_Tick())

    def _step(self) -> None:
        instances = self.leases.heartbeat()  # NameInUse: another run holds this name
        if self.shared.name_taken:
            log.warning(
                "this instance (%s) holds its name again: the other process under it has not "
                "been heard from for a lease",
                self.shared.instance,
            )
            self.shared.name_taken = ""
            if self.alarms is not None:
                self.alarms.clear("service", INSTANCE_NAME_TAKEN)
        self.shared.run = self.leases.run
        for name, lease in list(self._held().items()):
            try:
                renewed = self.leases.renew(lease)
            except LeaseLost:
                log.error(
                    "lost the lease of integration %s: another instance owns it; stopping it here",
                    name,
                    extra={"integration": name},
                )
                self.metrics.lease_renewals.labels("lost").inc()
                self._drop(name)
                self.tell(Lost(name))
                continue
            self.metrics.lease_renewals.labels("renewed").inc()
            with self.shared.lock:
                self.shared.held[name] = renewed
            self._deadlines[name] = time.monotonic() + self.shared.lease_seconds
        wanted = self.wanted()
        for name in self._held():
            if name not in wanted:  # removed from the config: stopped there, hand it over
                self.tell(Lost(name, release=True, then=self._later_release(name)))
        holders = self.leases.holders()
        take, give = plan(self.shared.instance, wanted, self._held(), holders, instances)
        if self._stopping_soon:
            take, give = [], []
        for name in take:
            taken = self.leases.acquire(name)
            if taken is None:
                continue  # another instance was quicker
            with self.shared.lock:
                self.shared.held[name] = taken
            self._deadlines[name] = time.monotonic() + self.shared.lease_seconds
            self.metrics.lease_changes.labels("gained").inc()
            self.metrics.integration_owned.labels(name, self.shared.instance).set(1)
            log.info(
                "this instance (%s) owns integration %s now (lease %d)",
                self.shared.instance,
                name,
                taken.token,
                extra={"integration": name},
            )
            self.tell(Gained(name))
        for name in give:
            log.info(
                "handing integration %s over: more instances share the integrations now",
                name,
                extra={"integration": name},
            )
            self.tell(Lost(name, release=True, then=self._later_release(name)))

    def _name_taken(self, exc: NameInUse) -> None:
        """Another process run holds this instance's name: it took it while this one was not
        heard from for a lease (paused, cut off), and runs under it now. This one runs nothing
        and takes nothing while that one lives (its leases lapsed meanwhile, and their tokens
        fence whatever it still tries); its heartbeats take the name back once that one is not
        heard from for a lease."""
        if not self.shared.name_taken:
            log.error(
                "%s: this process stops running integrations while that one lives; give every "
                "instance a name of its own ([storage] instance), or leave it empty",
                exc,
            )
        self.shared.name_taken = str(exc)
        if self.alarms is not None:
            self.alarms.raise_(
                "service",
                INSTANCE_NAME_TAKEN,
                f"{exc}: this instance runs no integration while that one lives",
            )
        for name in list(self._held()):
            self._drop(name)
            self.tell(Lost(name))

    def _expire_unrenewed(self) -> None:
        """The database did not answer: a lease this instance cannot renew in time is given up
        before it expires, so another instance never starts while this one still runs it."""
        margin = self.every
        now = time.monotonic()
        for name in list(self._held()):
            if self._deadlines.get(name, 0.0) - margin <= now:
                log.error(
                    "cannot renew the lease of integration %s (the database does not "
                    "answer): stopping it here before the lease runs out",
                    name,
                    extra={"integration": name},
                )
                self._drop(name)
                self.tell(Lost(name))

    def _later_release(self, name: str) -> Callable[[], None]:
        ref = self.actor_ref

        def release() -> None:
            with contextlib.suppress(pykka.ActorDeadError):
                ref.tell(_Release(name))

        return release

    def _held(self) -> dict[str, Lease]:
        with self.shared.lock:
            return dict(self.shared.held)

    def _drop(self, name: str, change: str = "lost") -> None:
        with self.shared.lock:
            held = self.shared.held.pop(name, None)
        self._deadlines.pop(name, None)
        if held is not None:
            self.metrics.lease_changes.labels(change).inc()
            self.metrics.integration_owned.labels(name, self.shared.instance).set(0)

    def release(self, name: str) -> None:
        """Give the lease up now (the integration has stopped here): another instance may take
        it at once."""
        lease = self._held().get(name)
        self._drop(name, "handed_over")
        if lease is not None:
            try:
                self.leases.release(lease)
            except (psycopg.Error, StorageUnavailableError) as exc:
                log.warning("could not release the lease of %s (%s): it expires", name, exc)

    def stopping(self) -> None:
        """The service stops: take nothing more (leases held are still renewed until
        release_all, so nothing runs here unfenced meanwhile)."""
        self._stopping_soon = True

    def release_all(self) -> None:
        """A clean stop: every lease given up, after the integrations stopped."""
        self._stopping = True
        for name in list(self._held()):
            self.release(name)
