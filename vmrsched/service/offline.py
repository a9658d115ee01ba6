"""The tools that run beside the service rather than in it (the CLI's `check-config --online`
and `recover`): probe an integration's mailbox and Pexip's Management Node with the config as
written, and recover the store and mailbox of a stopped service. Each builds its own gateway
and closes it; none starts an actor."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import psycopg
import requests

from vmrsched.config import Config, IntegrationConfig, store_dir
from vmrsched.errors import Unavailable
from vmrsched.mailbox.backends import TokenSources, make_gateway
from vmrsched.mailbox.base import Mailbox
from vmrsched.pexip.management import ManagementClient, PexipRefused, PexipUnavailable
from vmrsched.postgres import migrations
from vmrsched.postgres.leases import Lease, LeaseLost, Leases
from vmrsched.postgres.records import Records
from vmrsched.proxies import use_rule
from vmrsched.recovery import Recovered, recover
from vmrsched.service.runtime import database, database_stores
from vmrsched.store import DatabaseStore, Store, StoreInUseError, StoreWrites, lock_directory
from vmrsched.store.decisions import FileDecisions
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
    while it runs). With the shared database, against the integration's records there, under
    its lease (StoreInUseError while an instance runs it)."""
    if cfg.storage.backend == "postgresql":
        return _recover_shared(cfg, integ, now, dry_run, report)
    # the data directory's lock, which a running service holds for its whole life: a store
    # the service refused as damaged is let go while it runs (and retried), so the store's own
    # lock would not keep recover and the service apart
    held = lock_directory(cfg.data_dir, f"the data directory {cfg.data_dir}")
    try:
        store = Store(store_dir(cfg.data_dir, integ.name))
        gateway = partial(make_gateway, integ, cfg.data_dir, Metrics())
        history = FileDecisions(cfg.data_dir).read(integ.name)
        return _recover_closing(integ, store, gateway, now, dry_run, report, history)
    finally:
        os.close(held)


def _recover_closing(
    integ: IntegrationConfig,
    store: StoreWrites,
    open_gateway: Callable[[], Mailbox],
    now: datetime,
    dry_run: bool,
    report: Callable[[Recovered], None],
    history: Iterable[Mapping[str, Any]],
) -> list[Recovered]:
    """`recover` on `store` with the gateway `open_gateway` makes, reading the integration's
    decisions log (`history`, newest first); the store and the gateway closed after."""
    try:
        gateway = open_gateway()
        try:
            return recover(integ, gateway, store, now, dry_run, report, history)
        finally:
            gateway.close()
    finally:
        store.close()


def _recover_shared(
    cfg: Config,
    integ: IntegrationConfig,
    now: datetime,
    dry_run: bool,
    report: Callable[[Recovered], None],
) -> list[Recovered]:
    """Recovery on the shared database: the integration's lease is taken for as long as it
    runs, so that no instance runs the integration meanwhile and every commit is fenced by it
    (a lease lost midway refuses the next commit: nothing is written unfenced)."""
    connect = database(cfg)
    try:
        with connect() as conn:
            migrations.migrate(conn)
        leases = Leases(connect, f"recover@{socket.gethostname()}", cfg.storage.lease_seconds)
        lease = leases.acquire(integ.name)
    except psycopg.Error as exc:
        raise Unavailable(f"the database did not answer: {exc}", "database_unavailable") from exc
    if lease is None:
        raise StoreInUseError(f"{integ.name}: an instance runs it (it holds its lease)")
    records = Records(connect, integ.name)
    records.lease = lease
    stores = database_stores(connect, lambda name: lease)
    try:
        with _renewed(leases, lease, cfg.storage.lease_seconds / 3):
            store = DatabaseStore(
                records,
                reservation_ttl=timedelta(days=integ.reservation_ttl_days),
                horizon=timedelta(days=integ.booking_horizon_days),
            )
            tokens = TokenSources(cfg.data_dir, stores.token_cache)
            gateway = partial(
                make_gateway,
                integ,
                cfg.data_dir,
                Metrics(),
                tokens,
                graph_states=stores.graph_state,
            )
            history = stores.decisions.read(integ.name)
            return _recover_closing(integ, store, gateway, now, dry_run, report, history)
    finally:
        stores.close()
        with contextlib.suppress(psycopg.Error):
            leases.release(lease)


@contextlib.contextmanager
def _renewed(leases: Leases, lease: Lease, every: float) -> Iterator[None]:
    """Keep `lease` renewed while the block runs (it may take longer than one lease)."""
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(every):
            try:
                leases.renew(lease)
            except (LeaseLost, psycopg.Error):
                return  # the fence refuses the next commit

    thread = threading.Thread(target=renew, name="recover-lease", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
