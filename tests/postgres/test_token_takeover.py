"""The EWS service account's delegated token cache in the shared database (issue 30): the
service account signs in once, through the instance that runs the integration; the instance
that takes it over gets tokens from the same cache (refreshing them) without a new sign-in;
the old owner, once the lease is gone, keeps nothing more, and an instance that does not run
the integration cannot keep a sign-in in its stead. The sign-in may start on any instance and
finish on the one that runs the integration. Against the fake identity platform and Exchange."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import psycopg
import pytest
import requests

from tests import spoolkit
from tests.mailbox.test_ews import OAuthEnv, oauth, oauth_config
from tests.sharedkit import holder
from vmrsched import config, service
from vmrsched.config.fields import Secret
from vmrsched.errors import Unavailable
from vmrsched.mailbox.ews_auth import DelegatedTokens
from vmrsched.postgres import migrations
from vmrsched.postgres.leases import Lease, LeaseLost, Leases
from vmrsched.postgres.pool import Pool
from vmrsched.postgres.tokens import DatabaseTokenCache
from vmrsched.service import SignInRefused
from vmrsched.store import OwnershipLostError

__all__ = ["oauth"]  # the fixture, shared with the EWS tests

Connect = Callable[[], psycopg.Connection[Any]]


def test_the_next_owner_uses_the_service_accounts_sign_in_without_a_new_one(
    tmp_path: Path, oauth: OAuthEnv, connect: Connect
) -> None:
    with connect() as conn:
        migrations.migrate(conn)
    integ = oauth_config(tmp_path, oauth, "oauth_delegated").integrations[0]
    ex, name = integ.exchange, integ.name
    pool = Pool(connect)
    held_a: dict[str, Lease] = {}
    held_b: dict[str, Lease] = {}
    try:
        first = DelegatedTokens(ex, DatabaseTokenCache(pool, name, holder(held_a)))
        second = DelegatedTokens(ex, DatabaseTokenCache(pool, name, holder(held_b)))

        # an instance that does not run the integration cannot keep the sign-in
        authorize = second.start_sign_in(ex.oauth_redirect_uri)
        back = requests.get(authorize, verify=str(oauth.ca_file), allow_redirects=False, timeout=10)
        with pytest.raises(OwnershipLostError):
            second.finish_sign_in(dict(parse_qsl(urlsplit(back.headers["Location"]).query)))
        assert DatabaseTokenCache(pool, name, None).load() == (None, None)

        lease = Leases(connect, "instance-a", 30).acquire(name)
        assert lease is not None
        held_a[name] = lease
        authorize = first.start_sign_in(ex.oauth_redirect_uri)
        back = requests.get(authorize, verify=str(oauth.ca_file), allow_redirects=False, timeout=10)
        first.finish_sign_in(dict(parse_qsl(urlsplit(back.headers["Location"]).query)))
        assert first.get()
        kept = DatabaseTokenCache(pool, name, None).load()
        assert kept[0] is not None and kept[1] == first.identity

        # the owner is paused past its lease; instance B takes the integration over
        with connect() as conn:
            conn.execute("UPDATE vmrsched_leases SET expires = clock_timestamp()")
        taken = Leases(connect, "instance-b", 30).acquire(name)
        assert taken is not None
        held_b[name] = taken
        with pytest.raises(LeaseLost):  # what the old owner would keep is refused
            first.store.save("a stale cache", first.identity)
        assert DatabaseTokenCache(pool, name, None).load() == kept

        second.reload()  # as its gateway does when the integration starts there
        assert second.get(force=True)  # refreshed from the kept refresh token: no sign-in
        assert DatabaseTokenCache(pool, name, None).load() != kept  # and kept by the new owner
    finally:
        pool.close()


def shared(tmp: Path, env: OAuthEnv, dsn: str, instance: str) -> config.Config:
    """The EWS oauth_delegated integration on the shared database, as `instance` runs it."""
    folder = tmp / instance
    folder.mkdir()
    cfg = oauth_config(folder, env, "oauth_delegated")
    storage = replace(
        cfg.storage,
        backend="postgresql",
        dsn=Secret(dsn, "test"),
        instance=instance,
        lease_seconds=2,
    )
    return replace(cfg, storage=storage)


def test_the_service_accounts_sign_in_may_start_on_any_instance(
    tmp_path: Path, oauth: OAuthEnv, dsn: str
) -> None:
    owner = service.start(shared(tmp_path, oauth, dsn, "instance-a"))
    other = None
    try:
        spoolkit.wait_for(lambda: owner.ctx.shared is not None and owner.ctx.shared.owns("onprem"))
        other = service.start(shared(tmp_path, oauth, dsn, "instance-b"))

        # started on the instance that does not run the integration, finished on its owner
        url = asyncio.run(other.start_sign_in("onprem"))
        query = at_provider(url, oauth.ca_file)
        assert asyncio.run(other.sign_ins.service_account_sign_in_of(query["state"])) == "onprem"
        name, account = asyncio.run(owner.finish_sign_in(query))
        assert (name, account) == ("onprem", "svc-vmr@contoso.example")
        with pytest.raises(SignInRefused):  # one use
            asyncio.run(owner.finish_sign_in(query))

        # a callback that reaches the instance that does not run it cannot keep the sign-in
        query = at_provider(asyncio.run(owner.start_sign_in("onprem")), oauth.ca_file)
        with pytest.raises(Unavailable, match="runs on another instance"):
            asyncio.run(other.finish_sign_in(query))
    finally:
        if other is not None:
            other.stop()
        owner.stop()


def at_provider(url: str, ca: Path) -> dict[str, str]:
    back = requests.get(url, verify=str(ca), allow_redirects=False, timeout=10)
    assert back.status_code == 302, back.text
    return dict(parse_qsl(urlsplit(back.headers["Location"]).query))
