"""Leases: each integration's actors run on one instance at a time, and a write of an instance
that lost the lease never lands.

A lease is a row per integration: its owner (an instance id, unique per process run), a fencing
token that grows by one at every change of owner, and an expiry on the database's clock (the
instances' clocks never decide). The owner renews it well within `lease_seconds`; once it has
expired any instance may take it, with the next token.

Every write of an owner runs `fence` inside its own transaction: the lease row is read with
`FOR SHARE` and must still name this owner and token, unexpired. The share lock makes a
takeover (an UPDATE of that row) wait for the write's transaction to end, so a write is either
before the takeover, made under a lease that was valid, or refused: an instance that was paused
or cut off past its lease writes nothing afterwards (`LeaseLost`), and stops that integration.

Instances say they are alive in `vmrsched_instances`; each takes at most its fair share of the
integrations (`fair_share`), so they spread over the instances and move when one dies.

An instance's name is held by one process run at a time: the row's `started` says which (when
that run took the name, on the database's clock). A heartbeat writes the row only for the run
that holds it, or takes the name for a new run once the holder has not been heard from for a
lease (it died, or was paused or cut off that long); while the holder is alive another run
under the same name is refused (`NameInUse`) and never takes over the row, nor the URL where
the other instances reach the name's owner. Its leases are no help to a new run either: they
are fenced by their tokens, which it does not hold."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg

from vmrsched.store import OwnershipLostError

Connect = Callable[[], psycopg.Connection[Any]]


class NameInUse(Exception):
    """Another process run holds this instance's name and was heard from within a lease:
    `url` where it serves, `seen` its last heartbeat (the database's clock), `age` seconds ago,
    `started` when it took the name."""

    def __init__(
        self, instance: str, url: str, seen: datetime, age: float, started: datetime
    ) -> None:
        super().__init__(
            f"the instance name {instance!r} is in use by another running instance, at "
            f"{url or 'no advertised URL'} (its last heartbeat {age:.1f} s ago, "
            f"{seen.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC)"
        )
        self.instance = instance
        self.url = url
        self.seen = seen
        self.age = age
        self.started = started


class LeaseLost(OwnershipLostError):
    """This instance no longer holds the integration's lease: it must write nothing more and
    stop the integration's actors."""


@dataclass(frozen=True)
class Lease:
    integration: str
    owner: str
    token: int
    expires: datetime  # on the database's clock


def fence(cur: psycopg.Cursor[Any], lease: Lease) -> None:
    """Inside a write transaction: LeaseLost unless `lease` still holds. Holds a share lock on
    the lease row until the transaction ends, so no takeover lands in between."""
    cur.execute(
        """
        SELECT 1 FROM vmrsched_leases
         WHERE integration = %s AND owner = %s AND token = %s AND expires > clock_timestamp()
           FOR SHARE
        """,
        (lease.integration, lease.owner, lease.token),
    )
    if cur.fetchone() is None:
        raise LeaseLost(f"{lease.integration}: lease {lease.token} of {lease.owner} is lost")


def fair_share(integrations: int, instances: int) -> int:
    """How many integrations one instance takes: an equal share, rounded up."""
    return math.ceil(integrations / max(1, instances))


class Leases:
    """One instance's side of the leases: heartbeat, take, renew, give up."""

    def __init__(
        self,
        connect: Connect,
        instance: str,
        lease_seconds: float,
        url: str = "",
        run: datetime | None = None,
    ) -> None:
        self.connect = connect
        self.instance = instance
        self.lease_seconds = lease_seconds
        self.url = url  # where the other instances reach this one (`[storage] advertise_url`)
        self.run = run  # when this process run took the name (None: not yet)

    def heartbeat(self) -> int:
        """Say this instance is alive, and where the others reach it (they pass it requests
        for the integrations it runs); the number of live instances (seen within a lease).
        The first heartbeat of a run takes the name, and so does one after another run held
        it and went silent for a lease; NameInUse while another run under the same name is
        alive (nothing is written then)."""
        with self.connect() as conn, conn.transaction(), conn.cursor() as cur:
            cur.execute(
                """
                INSERT INTO vmrsched_instances AS i (instance, seen, started, url)
                VALUES (%(i)s, clock_timestamp(), clock_timestamp(), %(u)s)
                ON CONFLICT (instance) DO UPDATE
                   SET seen = EXCLUDED.seen, url = EXCLUDED.url,
                       started = CASE WHEN i.started = %(run)s::timestamptz THEN i.started
                                      ELSE EXCLUDED.started END
                 WHERE i.started = %(run)s::timestamptz
                    OR i.seen <= clock_timestamp() - make_interval(secs => %(s)s)
                RETURNING started
                """,
                {"i": self.instance, "u": self.url, "run": self.run, "s": self.lease_seconds},
            )
            taken = cur.fetchone()
            if taken is None:
                cur.execute(
                    """
                    SELECT url, seen, extract(epoch FROM clock_timestamp() - seen), started
                      FROM vmrsched_instances WHERE instance = %s
                    """,
                    (self.instance,),
                )
                held = cur.fetchone()
                if held is None:  # pragma: no cover - the row the INSERT met, locked until now
                    raise LookupError(f"no row of instance {self.instance!r}")
                url, seen, age, started = held
                raise NameInUse(self.instance, str(url), seen, float(age), started)
            self.run = taken[0]
            cur.execute(
                """
                SELECT count(*) FROM vmrsched_instances
                 WHERE seen > clock_timestamp() - make_interval(secs => %s)
                """,
                (self.lease_seconds,),
            )
            row = cur.fetchone()
            return int(row[0]) if row else 1

    def acquire(self, integration: str) -> Lease | None:
        """Take the integration's lease when nobody holds it (never held, expired, released):
        the new lease with the next token; None while another instance holds it."""
        with self.connect() as conn, conn.transaction(), conn.cursor() as cur:
            cur.execute(
                """
                INSERT INTO vmrsched_leases AS l (integration, owner, token, expires, acquired)
                VALUES (%(i)s, %(o)s, 1, clock_timestamp() + make_interval(secs => %(s)s),
                        clock_timestamp())
                ON CONFLICT (integration) DO UPDATE
                   SET owner = EXCLUDED.owner, token = l.token + 1,
                       expires = EXCLUDED.expires, acquired = EXCLUDED.acquired
                 WHERE l.expires <= clock_timestamp()
                RETURNING token, expires
                """,
                {"i": integration, "o": self.instance, "s": self.lease_seconds},
            )
            row = cur.fetchone()
        if row is None:
            return None
        return Lease(integration, self.instance, int(row[0]), row[1])

    def renew(self, lease: Lease) -> Lease:
        """Push the expiry one lease ahead; LeaseLost when it expired or changed hands."""
        with self.connect() as conn, conn.transaction(), conn.cursor() as cur:
            cur.execute(
                """
                UPDATE vmrsched_leases
                   SET expires = clock_timestamp() + make_interval(secs => %s)
                 WHERE integration = %s AND owner = %s AND token = %s
                   AND expires > clock_timestamp()
                RETURNING expires
                """,
                (self.lease_seconds, lease.integration, lease.owner, lease.token),
            )
            row = cur.fetchone()
        if row is None:
            raise LeaseLost(f"{lease.integration}: lease {lease.token} of {lease.owner} is lost")
        return Lease(lease.integration, lease.owner, lease.token, row[0])

    def release(self, lease: Lease) -> None:
        """Give the lease up at once (a clean stop): another instance may take it now instead
        of after the expiry. Nothing happens when it was already lost."""
        with self.connect() as conn, conn.transaction(), conn.cursor() as cur:
            cur.execute(
                """
                UPDATE vmrsched_leases SET expires = clock_timestamp()
                 WHERE integration = %s AND owner = %s AND token = %s
                """,
                (lease.integration, lease.owner, lease.token),
            )

    def holders(self, integrations: Iterable[str] | None = None) -> dict[str, Lease]:
        """Every unexpired lease (of `integrations` when given), by integration."""
        with self.connect() as conn, conn.transaction(), conn.cursor() as cur:
            cur.execute(
                """
                SELECT integration, owner, token, expires FROM vmrsched_leases
                 WHERE expires > clock_timestamp()
                """
            )
            rows = cur.fetchall()
        wanted = None if integrations is None else set(integrations)
        return {
            str(i): Lease(str(i), str(o), int(t), e)
            for i, o, t, e in rows
            if wanted is None or i in wanted
        }
