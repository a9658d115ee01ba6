"""Metrics (DESIGN.md names, prefix vmrsched_) and alarms, shared by actors and HTTP handlers.

Each service gets its own CollectorRegistry so that tests can run services side by side.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

log = logging.getLogger("vmrsched.alarms")


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.meeting_requests = Counter(
            "vmrsched_meeting_requests_total",
            "Meeting requests processed, by outcome and reason",
            ["integration", "outcome", "reason"],
            registry=r,
        )
        self.meeting_processing = Histogram(
            "vmrsched_meeting_processing_seconds",
            "Time from reading a mailbox item to its reply being durably queued",
            ["integration"],
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.mailbox_lag = Gauge(
            "vmrsched_mailbox_lag_seconds",
            "How far the mailbox side is behind: the age of the oldest meeting request in the "
            "last poll or of the oldest answer still waiting to be sent, whichever is older",
            ["integration"],
            registry=r,
        )
        # per integration: (incoming, outgoing) lag, of which the gauge shows the larger
        self._lags: dict[str, tuple[float, float]] = {}
        self._lags_lock = threading.Lock()
        self.exchange_requests = Counter(
            "vmrsched_exchange_requests_total",
            "Calls to Exchange (EWS or Graph)",
            ["integration", "operation", "result"],
            registry=r,
        )
        self.aliases_allocated = Counter(
            "vmrsched_aliases_allocated_total", "Aliases handed out", ["integration"], registry=r
        )
        self.alias_space_used = Gauge(
            "vmrsched_alias_space_used_ratio",
            "Share of the aliases an integration's range can produce that can no longer be "
            "handed out (active and archived: none is handed out twice)",
            ["integration"],
            registry=r,
        )
        self.scheduled_conferences = Gauge(
            "vmrsched_scheduled_conferences",
            "Conferences bound to a meeting",
            ["integration"],
            registry=r,
        )
        self.addin_requests = Counter(
            "vmrsched_addin_requests_total",
            "Add-in API requests",
            ["integration", "route", "status"],
            registry=r,
        )
        self.http_duration = Histogram(
            "vmrsched_http_request_duration_seconds", "HTTP request duration", ["route"], registry=r
        )
        self.policy_requests = Counter(
            "vmrsched_policy_requests_total",
            "Pexip policy requests by answer: conference, rejected, not_ours, unauthorized, "
            "bad_request",
            ["result"],
            registry=r,
        )
        self.policy_duration = Histogram(
            "vmrsched_policy_request_duration_seconds",
            "Time to answer a Pexip policy request",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )
        self.pexip_requests = Counter(
            "vmrsched_pexip_requests_total",
            "Pexip management API requests",
            ["integration", "operation", "result"],
            registry=r,
        )
        self.graph_notifications = Counter(
            "vmrsched_graph_notifications_total",
            "Microsoft Graph change and lifecycle notifications received: accepted, refused "
            "(wrong clientState), unknown (no such Graph integration)",
            ["integration", "result"],
            registry=r,
        )
        self.actor_restarts = Counter(
            "vmrsched_actor_restarts_total",
            "Actors restarted by their supervisor",
            ["integration", "actor"],
            registry=r,
        )
        self.integration_up = Gauge(
            "vmrsched_integration_up",
            "1 when the integration is running",
            ["integration"],
            registry=r,
        )
        self.alarm_active = Gauge(
            "vmrsched_alarm_active",
            "1 while an alarm is raised",
            ["integration", "alarm"],
            registry=r,
        )
        self.config_reloads = Counter(
            "vmrsched_config_reloads_total", "Configuration reloads", ["result"], registry=r
        )
        # instances sharing one database ([storage] backend = "postgresql")
        self.integration_owned = Gauge(
            "vmrsched_integration_owned",
            "1 while this instance holds the integration's lease (runs its actors); `owner` is "
            "the instance's name ([storage] instance)",
            ["integration", "owner"],
            registry=r,
        )
        self.lease_renewals = Counter(
            "vmrsched_lease_renewals_total",
            "Lease renewals by result (renewed, lost: another instance owns it now, "
            "unreachable: the database did not answer)",
            ["result"],
            registry=r,
        )
        self.lease_changes = Counter(
            "vmrsched_lease_changes_total",
            "Integrations this instance took (gained), lost (another took it, or the database "
            "did not answer in time) or handed over (a clean stop, or a share for a new instance)",
            ["change"],
            registry=r,
        )
        self.database_seconds = Histogram(
            "vmrsched_database_seconds",
            "Time of one round of lease work on the shared database (heartbeat, renewals)",
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )

    def set_lag(
        self, name: str, incoming: float | None = None, outgoing: float | None = None
    ) -> float:
        """One side's lag (the poller's incoming, the notifier's outgoing); the gauge shows the
        larger, which is returned: an answer that cannot be sent is lag as much as a request
        not yet read."""
        with self._lags_lock:
            before_in, before_out = self._lags.get(name, (0.0, 0.0))
            now = (
                before_in if incoming is None else incoming,
                before_out if outgoing is None else outgoing,
            )
            self._lags[name] = now
        lag = max(now)
        self.mailbox_lag.labels(name).set(lag)
        return lag

    def forget_integration(self, name: str) -> None:
        """Drop the per-integration gauges of a removed integration."""
        for gauge in (
            self.integration_up,
            self.scheduled_conferences,
            self.mailbox_lag,
            self.alias_space_used,
        ):
            with contextlib.suppress(KeyError):
                gauge.remove(name)
        with self._lags_lock:
            self._lags.pop(name, None)


@dataclass(frozen=True)
class Alarm:
    integration: str
    name: str
    message: str
    raised_at: float


# Every alarm the service raises, by name: alerting rules and the admin pages rely on these.
INTEGRATION_FAILED = "integration_failed"  # restarted too often; retried with backoff
SUPERVISOR_FAILED = "supervisor_failed"  # the root supervisor died; the service is stopping
CONFIG_INVALID = "config_invalid"  # a reload was refused; the old config runs on
MAILBOX_UNREACHABLE = "mailbox_unreachable"  # the spool (or any mailbox) cannot be read or written
EXCHANGE_UNREACHABLE = "exchange_unreachable"  # Exchange (EWS or Graph) does not answer
DELIVERY_FAILED = "delivery_failed"  # a message was given up on; `vmrsched failed` lists it
STORE_CORRUPT = "store_corrupt"  # damage found in a store; `vmrsched store repair`
SIGN_IN_REQUIRED = "service_account_sign_in_required"  # oauth_delegated needs an admin sign-in
PEXIP_UNREACHABLE = "pexip_unreachable"  # the Management Node does not answer
PEXIP_REFUSED = "pexip_refused"  # the Management Node refused a conference (4xx); see the log
ALIAS_SPACE_LOW = "alias_space_low"  # most of an integration's alias range is used up
STATE_DAMAGED = "state_damaged"  # a file the service keeps was damaged; kept aside, store check
STORAGE_FULL = "storage_full"  # the disk refused a write for want of space; 503 until it has room
# the shared database did not take a commit (unreachable, failing over); 503 until it answers
STORAGE_UNAVAILABLE = "storage_unavailable"
# another process runs under this instance's name ([storage] instance): this one runs nothing
INSTANCE_NAME_TAKEN = "instance_name_taken"
# handled messages stay in the mailbox's inbox: their removal keeps being refused (read again at
# every restart, never answered twice)
INBOX_NOT_EMPTIED = "inbox_not_emptied"


# Alarms that make the integration not ready (/readyz): its store cannot be trusted or written.
NOT_READY = frozenset({STORE_CORRUPT, STORAGE_FULL, STORAGE_UNAVAILABLE})


class Alarms:
    """Raised conditions that need an admin. Thread-safe; mirrored in vmrsched_alarm_active."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._lock = threading.Lock()
        self._active: dict[tuple[str, str], Alarm] = {}
        self._damaged: dict[str, dict[str, str]] = {}  # integration -> damaged file -> what
        # every (integration, alarm) with a vmrsched_alarm_active series, raised or cleared
        self._series: set[tuple[str, str]] = set()
        with _LIVE_LOCK:
            _LIVE.add(self)

    def raise_(self, integration: str, name: str, message: str, restate: bool = False) -> None:
        """Raise the alarm; one already raised stays as it was, unless `restate`: then a new
        message replaces its old one (the time it was raised kept), so that what the alarm says
        is the condition now (a config file fixed in one place and broken in another)."""
        with self._lock:
            earlier = self._active.get((integration, name))
            if earlier is not None and (not restate or earlier.message == message):
                return
            raised_at = earlier.raised_at if earlier is not None else time.time()
            self._active[(integration, name)] = Alarm(integration, name, message, raised_at)
            self._series.add((integration, name))
        self._metrics.alarm_active.labels(integration, name).set(1)
        log.warning(
            "alarm raised", extra={"integration": integration, "alarm": name, "detail": message}
        )

    def damaged(self, integration: str, path: Path | str, detail: str) -> None:
        """state_damaged, naming every damaged file found so far (one alarm per integration;
        "service" for files all integrations share)."""
        with self._lock:
            files = self._damaged.setdefault(integration, {})
            files[str(path)] = detail
            message = self._name_damaged(integration, files)
        self._metrics.alarm_active.labels(integration, STATE_DAMAGED).set(1)
        log.warning(
            "alarm raised",
            extra={"integration": integration, "alarm": STATE_DAMAGED, "detail": message},
        )

    def _name_damaged(self, integration: str, files: dict[str, str]) -> str:
        """state_damaged's alarm for `files` (the lock held): its message, raised since the
        first of them."""
        earlier = self._active.get((integration, STATE_DAMAGED))
        message = (
            "; ".join(f"{name}: {what}" for name, what in list(files.items())[-5:])
            + (f" (and {len(files) - 5} more)" if len(files) > 5 else "")
            + "; damaged files are kept aside as <name>.damaged-<time>, `vmrsched store "
            "check` lists them; the alarm clears once they are deleted"
        )
        self._active[(integration, STATE_DAMAGED)] = Alarm(
            integration,
            STATE_DAMAGED,
            message,
            earlier.raised_at if earlier is not None else time.time(),
        )
        self._series.add((integration, STATE_DAMAGED))
        return message

    def recheck_damaged(self) -> None:
        """Forget the damaged files that are gone: the guide's last step is to look at a file
        kept aside, then delete it, and the alarm clears once none of an integration's is
        left (or names only those still there). Called on a timer and at a reload."""
        with self._lock:
            named = {owner: list(files) for owner, files in self._damaged.items()}
        gone = {
            owner: [p for p in paths if not os.path.lexists(p)] for owner, paths in named.items()
        }
        for owner, paths in gone.items():
            if not paths:
                continue
            with self._lock:  # one step: a file found damaged meanwhile keeps the alarm
                files = self._damaged.get(owner, {})
                for path in paths:
                    files.pop(path, None)
                if files:
                    self._name_damaged(owner, files)
                else:
                    self._damaged.pop(owner, None)
                    self._active.pop((owner, STATE_DAMAGED), None)
            log.info(
                "damaged file(s) deleted: %s",
                ", ".join(paths),
                extra={"integration": owner, "alarm": STATE_DAMAGED},
            )
            if not files:
                self._metrics.alarm_active.labels(owner, STATE_DAMAGED).set(0)
                log.info("alarm cleared", extra={"integration": owner, "alarm": STATE_DAMAGED})

    def clear(self, integration: str, name: str) -> None:
        with self._lock:
            if name == STATE_DAMAGED:
                self._damaged.pop(integration, None)
            if self._active.pop((integration, name), None) is None:
                return
        self._metrics.alarm_active.labels(integration, name).set(0)
        log.info("alarm cleared", extra={"integration": integration, "alarm": name})

    def forget(self, integration: str) -> None:
        """An integration removed from the config: its alarms go, series and all (an alert on
        an integration that no longer exists could be neither explained nor cleared)."""
        with self._lock:
            gone = [key for key in self._series if key[0] == integration]
            self._series.difference_update(gone)
            raised = [name for (owner, name) in self._active if owner == integration]
            for name in raised:
                del self._active[(integration, name)]
            self._damaged.pop(integration, None)
        for key in gone:
            with contextlib.suppress(KeyError):
                self._metrics.alarm_active.remove(*key)
        for name in sorted(raised):
            log.info(
                "alarm cleared: the integration was removed from the config",
                extra={"integration": integration, "alarm": name},
            )

    def active(self, integration: str | None = None) -> list[Alarm]:
        with self._lock:
            return [
                a
                for a in self._active.values()
                if integration is None or a.integration == integration
            ]


_LIVE: weakref.WeakSet[Alarms] = weakref.WeakSet()
_LIVE_LOCK = threading.Lock()


def report_damaged(integration: str, path: Path | str, detail: str) -> None:
    """A file the service keeps (queue journal, sign-in key or sessions, token cache) was
    found damaged: raise state_damaged. The files' owners are opened where no alarms are at
    hand (the notifier's queue, the sign-in pages), and one service runs per process (its
    data directory is locked), so this reaches the alarms of every service alive in it."""
    with _LIVE_LOCK:
        live = list(_LIVE)
    for alarms in live:
        alarms.damaged(integration, path, detail)


@dataclass(frozen=True)
class Reject:
    at: float
    alias: str
    why: str


class PolicyActivity:
    """What the policy endpoint answered lately, for the admin pages: answers per minute over
    the last minutes (by result) and the last reject with why. Counted per minute, so a busy
    endpoint costs a dictionary update per answer."""

    MINUTES = 15

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._minutes: dict[int, dict[str, int]] = {}  # minute -> result -> answers
        self.last_reject: Reject | None = None

    def answered(self, result: str) -> None:
        minute = int(self.clock() // 60)
        with self._lock:
            counts = self._minutes.get(minute)
            if counts is None:
                counts = self._minutes[minute] = {}
                for old in [m for m in self._minutes if m <= minute - self.MINUTES]:
                    del self._minutes[old]
            counts[result] = counts.get(result, 0) + 1

    def rejected(self, alias: str, why: str) -> None:
        self.last_reject = Reject(self.clock(), alias[:200], why)

    def summary(self, minutes: int = 5) -> dict[str, object]:
        """Answers per minute over the last `minutes` whole minutes and the one running, by
        result, and the last reject."""
        now = self.clock()
        current = int(now // 60)
        with self._lock:
            recent = [c for m, c in self._minutes.items() if m > current - minutes]
        by_result: dict[str, int] = {}
        for counts in recent:
            for result, n in counts.items():
                by_result[result] = by_result.get(result, 0) + n
        span = (minutes - 1) + (now % 60) / 60  # minutes actually covered
        total = sum(by_result.values())
        reject = self.last_reject
        return {
            "minutes": minutes,
            "answers": total,
            "answers_per_minute": round(total / max(span, 1.0), 1),
            "by_result": dict(sorted(by_result.items())),
            "last_reject": None
            if reject is None
            else {"at": _iso(reject.at), "alias": reject.alias, "why": reject.why},
        }


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat()
