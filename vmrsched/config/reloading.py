"""What a reload applies: the [server] keys it takes at once (the rest wait for a restart), and
values built from one integration's config, rebuilt when a reload replaces it.

A reload swaps the frozen config objects while the service runs; whatever is derived from them
(compiled templates, token verifiers, the pane's texts) must follow it without each caller
tracking the swap.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from vmrsched.config.schema import Config, IntegrationConfig

# [server] keys a reload applies at once: each request reads them from the running config (who
# may use the admin console and API, what Pexip's nodes sign in to the policy endpoint with,
# whose X-Forwarded-For is believed), so a secret rotated in its file or variable takes effect
# on SIGHUP. Every other [server] key and all of [storage] are read when the service starts (the
# listening socket, the data directory, logging, the limits, the rate limiter, the sign-ins'
# URLs, the database and its leases): a reload keeps their running values, and says so, until
# a restart.
LIVE_SERVER_KEYS = frozenset(
    {"admin_token", "policy_username", "policy_password", "trusted_proxies"}
)


@dataclasses.dataclass(frozen=True)
class ServerChanges:
    """The keys of [server] and [storage] a reloaded file changed ("server.listen"): applied
    now, and waiting for a restart."""

    applied: tuple[str, ...] = ()
    pending: tuple[str, ...] = ()


def _changed(table: str, running: Any, new: Any) -> list[str]:
    return [
        f"{table}.{f.name}"
        for f in dataclasses.fields(new)
        if getattr(new, f.name) != getattr(running, f.name)
    ]


def as_reloaded(running: Config, new: Config) -> tuple[Config, ServerChanges]:
    """`new` as a reload applies it while `running` runs: its [server] keys of LIVE_SERVER_KEYS
    taken, every other [server] key and [storage] kept at their running values (and the
    integrations' copy of public_url with them), so that what runs is the old value of a key or
    what the reload said it applied, never half of one."""
    changed = _changed("server", running.server, new.server)
    changed += _changed("storage", running.storage, new.storage)
    applied = tuple(k for k in changed if k.removeprefix("server.") in LIVE_SERVER_KEYS)
    pending = tuple(k for k in changed if k not in applied)
    if not pending:
        return new, ServerChanges(applied, pending)
    kept = {
        key.removeprefix("server."): getattr(running.server, key.removeprefix("server."))
        for key in pending
        if key.startswith("server.")
    }
    server = dataclasses.replace(new.server, **kept)
    integrations = tuple(
        dataclasses.replace(integ, public_url=server.public_url.rstrip("/"))
        for integ in new.integrations
    )
    reloaded = dataclasses.replace(
        new, server=server, integrations=integrations, storage=running.storage
    )
    return reloaded, ServerChanges(applied, pending)


T = TypeVar("T")


class PerConfig(Generic[T]):
    """A value derived from one integration's config, rebuilt when a reload replaces the config
    object. Looked up by identity: hashing the (large, frozen) config on every request costs
    more than the work it saves."""

    def __init__(self, build: Callable[[IntegrationConfig], T]) -> None:
        self.build = build
        self._values: dict[str, tuple[IntegrationConfig, T]] = {}

    def __call__(self, integ: IntegrationConfig) -> T:
        entry = self._values.get(integ.name)
        if entry is None or entry[0] is not integ:
            entry = (integ, self.build(integ))
            self._values[integ.name] = entry
        return entry[1]
