"""Personal VMRs: where a user's rooms come from, behind one small interface.

`file`: a TOML directory (config/vmrs.toml: users and their rooms), re-read when it changes.
`pexip`: the Pexip management API: the end user found by email (case-insensitive), created when
allow_new_users is on, and the conferences whose owner email is theirs, each with at least one
alias; answers are cached briefly, and an outage is an error the add-in shows, never a hang.
"""

from __future__ import annotations

import threading
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import requests

from vmrsched.config import IntegrationConfig
from vmrsched.pexip.management import (
    ManagementClient,
    PexipRefused,
    PexipUnavailable,
    alias_strings,
)
from vmrsched.pexip.policy import PersonalRoom
from vmrsched.proxies import use_rule

CACHE_SECONDS = 60.0
SERVICE_TYPES = ("conference", "lecture", "two_stage_dialing")


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


def _vmr(raw: dict[str, Any], owner: str) -> PersonalVmr | None:
    aliases = tuple(str(a) for a in raw.get("aliases") or [] if str(a).strip())
    if not aliases:
        return None  # a room nobody can dial is not offered
    service_type = str(raw.get("service_type", "conference"))
    return PersonalVmr(
        name=str(raw.get("name", "")) or aliases[0],
        aliases=aliases,
        description=str(raw.get("description", "")),
        owner_email=str(raw.get("owner_email", owner)),
        pin=str(raw.get("pin", "")),
        guest_pin=str(raw.get("guest_pin", "")),
        allow_guests=bool(raw.get("allow_guests", False)),
        service_type=service_type if service_type in SERVICE_TYPES else "conference",
    )


class FileDirectory:
    """[[users]] with email and [[users.vmrs]] (name, description, aliases, pin, guest_pin,
    allow_guests, service_type). Read again when the file changes."""

    def __init__(self, path: Path, allow_new_users: bool) -> None:
        self.path = path
        self.allow_new_users = allow_new_users
        self._lock = threading.Lock()
        self._stamp: tuple[float, int] | None = None
        self._users: dict[str, list[PersonalVmr]] = {}
        self._published = False

    def _load(self) -> dict[str, list[PersonalVmr]]:
        try:
            stat = self.path.stat()
            stamp = (stat.st_mtime, stat.st_size)
            with self._lock:
                if stamp == self._stamp:
                    return self._users
            document = tomllib.loads(self.path.read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise DirectoryUnavailable(f"the directory {self.path} cannot be read: {exc}") from exc
        users: dict[str, list[PersonalVmr]] = {}
        for user in document.get("users", []):
            email = str(user.get("email", "")).strip().lower()
            if email:
                vmrs = [_vmr(v, email) for v in user.get("vmrs", [])]
                users[email] = [v for v in vmrs if v is not None]
        with self._lock:
            self._stamp, self._users = stamp, users
        return users

    def rooms(self) -> list[PersonalVmr] | None:
        """Every user's rooms, read again only when the file changed; None when unchanged
        since the last call (for the policy index, which a timer keeps current)."""
        before = self._stamp
        users = self._load()
        if self._stamp == before and self._published:
            return None
        self._published = True
        return [vmr for vmrs in users.values() for vmr in vmrs]

    def peek(self, email: str) -> list[PersonalVmr] | None:
        try:
            stat = self.path.stat()  # one stat: cheap enough for the loop
        except OSError:
            return None
        with self._lock:
            if (stat.st_mtime, stat.st_size) != self._stamp:
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
    """The Pexip management API as the directory (shares the provisioner's client)."""

    def __init__(self, client: ManagementClient, allow_new_users: bool) -> None:
        self.client = client
        self.allow_new_users = allow_new_users
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
        key = email.strip().lower()
        with self._lock:
            reading = self._reading.setdefault(key, threading.Lock())
        with reading:
            with self._lock:
                cached = self._cache.get(key)
            if cached is None or time.monotonic() - cached[0] >= CACHE_SECONDS:
                try:
                    cached = (time.monotonic(), self._read(key))
                except (PexipUnavailable, PexipRefused) as exc:
                    raise DirectoryUnavailable(f"Pexip cannot list personal VMRs: {exc}") from exc
                with self._lock:
                    self._cache[key] = cached
                    self._reading.pop(key, None)  # later readers find the cache
        if cached[1] is None:
            raise UserUnknown(email)
        return list(cached[1])

    def _read(self, email: str) -> list[PersonalVmr] | None:
        # Pexip ignores filters it does not know: every answer is checked here as well
        users = [
            u
            for u in self.client.list("end_user", primary_email_address__iexact=email)
            if str(u.get("primary_email_address", "")).lower() == email
        ]
        if not users:
            if not self.allow_new_users:
                return None
            try:
                self.client.create("end_user", {"primary_email_address": email})
            except PexipRefused as exc:
                # created meanwhile (another instance, or Pexip's own sync): that is the user
                if not exc.about("primary_email_address"):
                    raise
        vmrs: list[PersonalVmr] = []
        for conference in self.client.list("conference", primary_owner_email_address__iexact=email):
            if str(conference.get("primary_owner_email_address", "")).lower() != email:
                continue
            aliases = alias_strings(conference)  # Pexip's shape, or the node is unavailable
            vmr = _vmr(
                {
                    "name": conference.get("name", ""),
                    "description": conference.get("description", ""),
                    "aliases": aliases,
                    "pin": conference.get("pin", ""),
                    "guest_pin": conference.get("guest_pin", ""),
                    "allow_guests": conference.get("allow_guests", False),
                    "service_type": conference.get("service_type", "conference"),
                },
                email,
            )
            if vmr is not None:
                vmrs.append(vmr)
        return vmrs


def directory_for(integ: IntegrationConfig, base_dir: Path) -> Directory:
    personal = integ.personal
    if personal.source == "pexip":
        px = integ.pexip
        password = px.management_password.reveal() if px.management_password else ""
        session = use_rule(requests.Session(), integ.advanced.disable_web_proxy)
        client = ManagementClient(px, password, session=session)
        return PexipDirectory(client, personal.allow_new_users)
    path = Path(personal.directory_file)
    return FileDirectory(path if path.is_absolute() else base_dir / path, personal.allow_new_users)


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
