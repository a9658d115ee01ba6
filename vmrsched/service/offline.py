"""The tools that run beside the service rather than in it (the CLI's `check-config --online`
and `recover`): probe an integration's mailbox and Pexip's Management Node with the config as
written, and recover the store and mailbox of a stopped service. Each builds its own gateway
and closes it; none starts an actor."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import requests

from vmrsched.config import Config, IntegrationConfig, store_dir
from vmrsched.mailbox.backends import make_gateway
from vmrsched.pexip.management import ManagementClient, PexipRefused, PexipUnavailable
from vmrsched.proxies import use_rule
from vmrsched.recovery import Recovered, recover
from vmrsched.service.runtime import refuse_shared_records
from vmrsched.store import Store
from vmrsched.telemetry import Metrics

__all__ = ["Recovered", "check_online", "recover_integration"]


def check_online(
    cfg: Config, integ: IntegrationConfig, organizer: str = "", outside: str = ""
) -> list[tuple[bool | None, str]]:
    """Connect to an integration's mailbox (and Pexip's Management Node where the service
    creates conferences): (ok, what was tried) per check; ok None is a warning (it works, but
    reaches further than it should). `organizer`: a mailbox that must be in the service's
    scope; `outside`: one that must not be."""
    checks: list[tuple[bool | None, str]] = []
    try:
        gateway = make_gateway(integ, cfg.data_dir, Metrics())
    except Exception as exc:
        checks.append((False, str(exc)))
    else:
        try:
            checks.extend(gateway.probe(organizer=organizer, outside=outside))
        finally:
            gateway.close()
    if integ.pexip.mode == "management_api" or integ.pexip.management_url:
        checks.append(_probe_pexip(integ))
    return checks


def _probe_pexip(integ: IntegrationConfig) -> tuple[bool, str]:
    px = integ.pexip
    password = px.management_password.reveal() if px.management_password else ""
    # the service's one proxy rule, as for the integration's other calls
    session = use_rule(requests.Session(), integ.advanced.disable_web_proxy)
    client = ManagementClient(px, password, session=session)
    try:
        count = sum(1 for _ in client.list("conference", name="vmrsched connectivity check"))
    except (PexipUnavailable, PexipRefused) as exc:
        return False, f"Pexip management API at {px.management_url}: {exc}"
    finally:
        client.close()
    return True, (
        f"Pexip management API at {px.management_url} answers as {px.management_username!r} "
        f"(read conferences: {count} match a test name)"
    )


def recover_integration(
    cfg: Config,
    integ: IntegrationConfig,
    now: datetime,
    dry_run: bool,
    report: Callable[[Recovered], None],
) -> list[Recovered]:
    """Run recovery against the store and mailbox of a stopped service (StoreInUseError
    while it runs; ServiceError when the records are in the shared database, see
    refuse_shared_records)."""
    refuse_shared_records(
        cfg,
        "recover (run it on a file store: stop every instance, `vmrsched store migrate --to "
        "file`, recover, then migrate back)",
    )
    store = Store(store_dir(cfg.data_dir, integ.name))
    try:
        gateway = make_gateway(integ, cfg.data_dir, Metrics())
        try:
            return recover(integ, gateway, store, now, dry_run, report)
        finally:
            gateway.close()
    finally:
        store.close()
