"""Personal VMRs: where a user's rooms come from, behind one small interface.

`file`: a TOML directory (config/vmrs.toml: users and their rooms), read and checked as
check-config checks it (`config.checks.read_directory`) and read again when it changes. A change
with problems leaves the last good directory in use, with one warning naming them, until the
file is fixed; with no good one yet, the directory is unavailable. The last good directory is
the process's, per file: a directory built anew for the same file (a config reload builds one
for every integration) starts from it, so a bad save just after a reload changes nothing either.
`pexip`: the Pexip management API: the end user found by email (case-insensitive), created when
allow_new_users is on, and the conferences whose owner email is theirs, each with at least one
alias; answers are cached briefly. One lookup (every page, and the user's creation) ends by its
deadline, and an outage or a refused creation is an error the add-in shows, never a hang nor
"no rooms".
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import requests

from vmrsched.config import IntegrationConfig
from vmrsched.config.checks import SERVICE_TYPES, read_directory
from vmrsched.pexip.management import (
    Deadline,
    ManagementClient,
    PexipRefused,
    PexipUnavailable,
    alias_strings,
    watch_deadlines,
)
from vmrsched.pexip.policy import PersonalRoom
from vmrsched.proxies import use_rule

log = logging.getLogger("vmrsched.directory")
CACHE_SECONDS = 60.0
# The most one Pexip lookup may take, whatever request_timeout_seconds allows: the pane gives
# up on the add-in API after 10 s (addin-core.js API_TIMEOUT_MS), and the answer still has to
# be rendered and carried there.
PANE_BUDGET = 7.0
MAX_SHOWN = 20  # problems of a directory file named in one warning


class UserUnknown(LookupError):
    """The user has no record and may not get one (allow_new_users is off)."""


class DirectoryUnavailable(RuntimeError):
    """The directory cannot be read now (file broken, Pexip unreachable)."""


@dataclass(frozen=True)
class PersonalVmr:
    name: str
    aliases: tuple[str, ...]
    description: str = ""
    owner_email: str = ""
    pin: str = ""
    guest_pin: str = ""
    allow_guests: bool = False
    service_type: str = "conference"


class Directory(Protocol):
    def vmrs_of(self, email: str) -> list[PersonalVmr]:
        """The user's VMRs (may be empty); UserUnknown or DirectoryUnavailable otherwise."""
        ...

    def peek(self, email: str) -> list[PersonalVmr] | None:
        """The answer when it is at hand without waiting (cached or unchanged), else None:
        callers on the event loop ask this first and `vmrs_of` in a thread otherwise."""
        ...


@dataclass(frozen=True)
class _Good:
    """A directory file's last good read in this process."""

    read: int  # which read (`_reads`): a later read's content wins over an earlier one's
    stamp: tuple[object, ...]  # the file as it was read (`FileDirectory._stamp`)
    users: dict[str, list[PersonalVmr]]


# Per file (its absolute path), the last good content any FileDirectory of this process read:
# a new FileDirectory for the same file (a reload builds new ones) starts from it, so the last
# good directory outlives the object that read it. A file no longer named by the config keeps
# its entry (a few per process): named again, it starts from it too, until read good again.
_last_good: dict[str, _Good] = {}
_last_good_lock = threading.Lock()
_reads = itertools.count(1)


def _next_read() -> int:
    with _last_good_lock:
        return next(_reads)


def _kept(key: str) -> _Good | None:
    with _last_good_lock:
        return _last_good.get(key)


def _keep(key: str, good: _Good) -> None:
    with _last_good_lock:
        kept = _last_good.get(key)
        if kept is None or kept.read < good.read:
            _last_good[key] = good


class FileDirectory:
    """[[users]] with email and [[users.vmrs]] (name, description, aliases, pin, guest_pin,
    allow_guests, service_type). Read again when the file changes (its modification time,
    size or inode); a faulty file is not taken: the last good one stays in use, the last good
    one this process read of the same file even when another FileDirectory read it."""

    def __init__(
        self,
        path: Path,
        allow_new_users: bool,
        integration: str = "",
        vet: Callable[[dict[str, list[PersonalVmr]]], list[str]] | None = None,
    ) -> None:
        self.path = path
        # what the service checks of a file's rooms beyond the file itself (an alias a
        # single-use range or a booking holds): problems that keep the file from being taken
        self._vet = vet
        self._key = os.path.abspath(path)  # the file, for `_last_good`
        self.allow_new_users = allow_new_users
        # for the log: integrations may share one file, and each says what it does about it
        self._said = {"integration": integration} if integration else {}
        self._lock = threading.Lock()  # the state below
        self._reading = threading.Lock()  # one read of the file at a time
        self._seen: tuple[object, ...] | None = None  # the file as last read (`_stamp`)
        self._users: dict[str, list[PersonalVmr]] | None = None  # in use: the last good file's
        self._problem = ""  # why the file as last read is not in use ("" when it is)
        self._version = 0  # taken good files
        self._published = -1  # the version `rooms` gave out last
        kept = _kept(self._key)
        if kept is not None:  # in use until the file reads good again; unchanged, not read
            self._seen, self._users, self._version = kept.stamp, kept.users, 1

    def _stamp(self) -> tuple[object, ...]:
        try:
            stat = self.path.stat()
        except OSError as exc:
            return ("unreadable", exc.errno)
        return (stat.st_mtime_ns, stat.st_size, stat.st_ino)

    def _in_use(self) -> dict[str, list[PersonalVmr]]:
        if self._users is None:
            raise DirectoryUnavailable(self._problem)
        return self._users

    def _load(self) -> dict[str, list[PersonalVmr]]:
        with self._reading:
            stamp = self._stamp()
            with self._lock:
                if stamp == self._seen:
                    return self._in_use()
            read = _next_read()
            found, problems = read_directory(self.path, self.path.name)
            users = {
                email: [PersonalVmr(owner_email=email, **room) for room in rooms]
                for email, rooms in found.items()
            }
            if not problems and self._vet is not None:
                problems = self._vet(users)
            if not problems:
                _keep(self._key, _Good(read, stamp, users))
            with self._lock:
                self._seen = stamp
                if problems:
                    self._refuse(problems)
                else:
                    if self._problem:
                        log.info(
                            "personal VMRs: the directory file %s is fixed: in use again, %d users",
                            self.path,
                            len(users),
                            extra=self._said,
                        )
                    self._users, self._problem = users, ""
                    self._version += 1
                return self._in_use()

    def _refuse(self, problems: list[str]) -> None:
        """A faulty file: said once (a request, a peek and the policy index's refresh all
        look again), and again only when its problems change."""
        said = "; ".join(problems[:MAX_SHOWN])
        if len(problems) > MAX_SHOWN:
            said += f"; and {len(problems) - MAX_SHOWN} more (check-config lists them all)"
        if self._users is None:
            problem = f"the directory file {self.path} cannot be used: {said}"
        else:
            problem = (
                f"the directory file {self.path} changed and cannot be used; the last good one "
                f"stays in use until it is fixed: {said}"
            )
        if problem != self._problem:
            log.warning("personal VMRs: %s", problem, extra=self._said)
        self._problem = problem

    def rooms(self) -> list[PersonalVmr] | None:
        """Every user's rooms when the directory in use changed since the last call, else
        None (for the policy index, which a timer keeps current; a faulty file changes
        nothing there)."""
        try:
            users = self._load()
        except DirectoryUnavailable:
            return None  # warned already; there is nothing to serve
        with self._lock:
            if self._published == self._version:
                return None
            self._published = self._version
        return [vmr for vmrs in users.values() for vmr in vmrs]

    def peek(self, email: str) -> list[PersonalVmr] | None:
        stamp = self._stamp()  # one stat: cheap enough for the loop
        with self._lock:
            if stamp != self._seen or self._users is None:
                return None
            found = self._users.get(email.strip().lower())
        if found is None:
            return None if not self.allow_new_users else []  # unknown: vmrs_of says why
        return list(found)

    def vmrs_of(self, email: str) -> list[PersonalVmr]:
        users = self._load()
        found = users.get(email.strip().lower())
        if found is None:
            if not self.allow_new_users:
                raise UserUnknown(email)
            return []
        return list(found)


class PexipDirectory:
    """The Pexip management API as the directory, on a client of its own (`directory_for`):
    its session's calls are watched for each lookup's deadline."""

    def __init__(self, client: ManagementClient, allow_new_users: bool) -> None:
        self.client = client
        self.allow_new_users = allow_new_users
        # one lookup, all its calls together: request_timeout_seconds, and never so long that
        # the pane gives up first
        self.budget = min(client.timeout, PANE_BUDGET)
        watch_deadlines(client.session)
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, list[PersonalVmr] | None]] = {}
        # one read of Pexip per user at a time: a new user's first requests arrive together,
        # and only one of them may create the end user (the others wait for its answer)
        self._reading: dict[str, threading.Lock] = {}

    def peek(self, email: str) -> list[PersonalVmr] | None:
        with self._lock:
            cached = self._cache.get(email.strip().lower())
        if cached is None or cached[1] is None or time.monotonic() - cached[0] >= CACHE_SECONDS:
            return None
        return list(cached[1])

    def vmrs_of(self, email: str) -> list[PersonalVmr]:
        deadline = Deadline(self.budget, "a personal lookup")
        key = email.strip().lower()
        with self._lock:
            reading = self._reading.setdefault(key, threading.Lock())
        if not reading.acquire(timeout=max(deadline.remaining(), 0.0)):
            raise DirectoryUnavailable(
                f"Pexip cannot list personal VMRs: the lookup of {key} before this one is "
                f"still waiting for the Management Node after {self.budget:g} s"
            )
        try:
            with self._lock:
                cached = self._cache.get(key)
            if cached is None or time.monotonic() - cached[0] >= CACHE_SECONDS:
                try:
                    cached = (time.monotonic(), self._read(key, deadline))
                except (PexipUnavailable, PexipRefused) as exc:
                    raise DirectoryUnavailable(f"Pexip cannot list personal VMRs: {exc}") from exc
                with self._lock:
                    self._cache[key] = cached
                    self._reading.pop(key, None)  # later readers find the cache
        finally:
            reading.release()
        if cached[1] is None:
            raise UserUnknown(email)
        return list(cached[1])

    def _exists(self, email: str, deadline: Deadline) -> bool:
        # Pexip ignores filters it does not know: every answer is checked here as well
        return any(
            str(u.get("primary_email_address", "")).lower() == email
            for u in self.client.list("end_user", deadline, primary_email_address__iexact=email)
        )

    def _create(self, email: str, deadline: Deadline) -> None:
        """The end user created; DirectoryUnavailable, naming what Pexip said, when it was
        not, unless it is there now all the same (another instance or Pexip's own sync created
        it meanwhile, whatever the refusal says)."""
        try:
            self.client.create("end_user", {"primary_email_address": email}, deadline)
        except (PexipRefused, PexipUnavailable) as exc:
            try:
                there = self._exists(email, deadline)
            except PexipUnavailable:
                there = False
            if there:
                return
            status = f" ({exc.status})" if exc.status else ""
            raise DirectoryUnavailable(
                f"Pexip did not create the end user {email}{status}: {exc.answer or exc}"
            ) from exc

    def _read(self, email: str, deadline: Deadline) -> list[PersonalVmr] | None:
        if not self._exists(email, deadline):
            if not self.allow_new_users:
                return None
            self._create(email, deadline)
        vmrs: list[PersonalVmr] = []
        listed = self.client.list("conference", deadline, primary_owner_email_address__iexact=email)
        for conference in listed:
            if str(conference.get("primary_owner_email_address", "")).lower() != email:
                continue
            # Pexip's shape, or the node is unavailable
            aliases = [a for a in alias_strings(conference) if a.strip()]
            if not aliases:
                continue  # a room nobody can dial is not offered
            service_type = str(conference.get("service_type", "conference"))
            vmrs.append(
                PersonalVmr(
                    name=str(conference.get("name", "")) or aliases[0],
                    aliases=tuple(aliases),
                    description=str(conference.get("description", "")),
                    owner_email=email,
                    pin=str(conference.get("pin", "")),
                    guest_pin=str(conference.get("guest_pin", "")),
                    allow_guests=bool(conference.get("allow_guests", False)),
                    service_type=service_type if service_type in SERVICE_TYPES else "conference",
                )
            )
        return vmrs


def directory_for(
    integ: IntegrationConfig,
    base_dir: Path,
    vet: Callable[[dict[str, list[PersonalVmr]]], list[str]] | None = None,
) -> Directory:
    """The integration's personal-VMR directory; `vet`: the service's checks of a directory
    file's rooms beyond the file (FileDirectory)."""
    personal = integ.personal
    if personal.source == "pexip":
        px = integ.pexip
        password = px.management_password.reveal() if px.management_password else ""
        session = use_rule(requests.Session(), integ.advanced.disable_web_proxy)
        client = ManagementClient(px, password, session=session)
        return PexipDirectory(client, personal.allow_new_users)
    path = Path(personal.directory_file)
    return FileDirectory(
        path if path.is_absolute() else base_dir / path, personal.allow_new_users, integ.name, vet
    )


def policy_room(integration: str, vmr: PersonalVmr) -> PersonalRoom:
    """A personal VMR as the policy answer serves it."""
    return PersonalRoom(
        integration,
        vmr.name,
        vmr.aliases,
        vmr.description,
        vmr.pin,
        vmr.guest_pin,
        vmr.allow_guests,
        vmr.service_type,
    )


def template_values(vmr: PersonalVmr, joining_domain: str) -> dict[str, Any]:
    """The personal template variables of one VMR."""
    domain = [a for a in vmr.aliases if "@" in a]
    numeric = [a for a in vmr.aliases if a.isdigit()]
    other = [a for a in vmr.aliases if a not in domain and a not in numeric]
    return {
        "addin_server_domain": joining_domain,
        "aliases": list(vmr.aliases),
        "domain_aliases": domain,
        "numeric_aliases": numeric,
        "other_aliases": other,
        "allow_guests": vmr.allow_guests,
        "description": vmr.description,
        "guest_pin": vmr.guest_pin,
        "pin": vmr.pin,
        "name": vmr.name,
        "owners_email": vmr.owner_email,
        "service_type": vmr.service_type,
    }
