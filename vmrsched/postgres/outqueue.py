"""The notifier's durable queue of outgoing messages in PostgreSQL (`[storage] backend =
"postgresql"`): what `vmrsched.store.outqueue.OutQueue` keeps in a journal, kept where any instance
that takes the integration over finds it.

The promises are the file queue's (see its docstring), with the database keeping them:
- an id seen is never queued again: a message is queued only in the transaction that inserted
  its id into `vmrsched_outqueue_seen`, whose primary key refuses a second row; the queued and
  failed rows' foreign keys make every one of them seen, so pruning the seen ids (after
  SEEN_DAYS, beyond SEEN_MAX) never forgets a message still queued or failed;
- every change is one transaction, durable when the call returns (the commit);
- the instance that owns the integration is the only writer: each transaction is fenced by its
  lease first (`leases.fence`), so once another instance took the integration over, a write of
  the old owner raises LeaseLost and lands nothing, and the new owner's queue holds exactly
  what the old one committed (a done or a failure included: what was delivered is never sent
  again).

The notifier reads the queue at every flush, so the queued and failed messages (a few, at most
FAILED_MAX failed) are kept in memory, changed only after a commit. Being the only writer, the
owner's view is the database's. A call that failed in a way that may have left the database
changed after all (the connection lost during the commit) marks the view stale: the next call
reads it again, so a delivery that did commit is never sent again. The seen ids (up to SEEN_MAX)
stay in the database, which answers `seen` and refuses a second queuing itself.

One connection, owned by the notifier's thread (the admin pages reach the queue through the
notifier's proxy, in that thread), dropped after an error and opened again at the next call, as
`records.Records` does: a database that restarted or failed over is found again. Every call
blocks, so it runs in an actor thread, never on the event loop."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
from psycopg.types.json import Jsonb

from vmrsched.outgoing import Outgoing
from vmrsched.postgres.connection import Connect, DatabaseUnavailable, OwnConnection
from vmrsched.postgres.leases import Lease, LeaseLost, fence
from vmrsched.store.outqueue import FAILED_MAX, SEEN_DAYS, SEEN_MAX, Failed, MessageQueue, Queued

# The seen ids are pruned in an `add` at most this often (seconds), or once a tenth of
# SEEN_MAX ids were seen since: often enough to stay near SEEN_MAX, rarely enough that the
# ordered scan it takes costs nothing noticeable.
PRUNE_EVERY = 3600.0


def _jsonb(message: Outgoing) -> Jsonb:
    """A message as the journal writes it (`Outgoing.to_json`, through orjson), so both
    backends hold the same document and a move between them loses nothing."""
    return Jsonb(message.to_json(), dumps=lambda value: orjson.dumps(value).decode())


def _when(at: float) -> datetime:
    return datetime.fromtimestamp(at, UTC)


def _exact(at: float) -> float:
    """A time as it reads back from the database (microseconds), so the view holds what a
    fresh read would."""
    return _when(at).timestamp()


def _tenure(lease: Lease | None) -> tuple[str, int] | None:
    return None if lease is None else (lease.owner, lease.token)


class DatabaseOutQueue(OwnConnection, MessageQueue):
    """One integration's out-queue in the shared database; the same methods, return values and
    promises as `OutQueue`."""

    # the notifier's proxy reaches the queue (the admin pages list, retry and discard)
    pykka_traversable = True

    def __init__(
        self,
        connect: Connect,
        integration: str,
        clock: Callable[[], float] = time.time,
        *,
        lease: Lease | None = None,
    ) -> None:
        """Reads the queue at once (DatabaseUnavailable when the database cannot be reached;
        LeaseLost when `lease` no longer holds). Open it under the lease that makes this
        instance the owner: a view read before the takeover could miss what the previous owner
        committed up to it."""
        super().__init__(connect)
        self.integration = integration
        self.clock = clock
        self._lease = lease
        self._pending: dict[str, Queued] = {}  # in queue order
        self._failed: dict[str, Failed] = {}  # in the order they failed
        self._stale = True  # the view must be read (again) before it is used
        self._pruned_at: float | None = None
        self._seen_since_prune = 0
        self._fresh()

    @property
    def lease(self) -> Lease | None:
        """The lease every write is fenced by (None: no leases in use, one instance)."""
        return self._lease

    @lease.setter
    def lease(self, lease: Lease | None) -> None:
        """A renewal keeps the view; another owner or token means another tenure: the view is
        read again, under it, before it is used."""
        if _tenure(lease) != _tenure(self._lease):
            self._stale = True
        self._lease = lease

    # --- reading the view, and writing --------------------------------------------------------

    def _fresh(self) -> None:
        """Read the queued and failed messages when the view may be behind the database."""
        if not self._stale:
            return
        pending: dict[str, Queued] = {}
        failed: dict[str, Failed] = {}
        try:
            conn = self._connection()
            with conn.transaction(), conn.cursor() as cur:
                # fenced like a write: the view is read under the lease (after the takeover
                # that gave it, so with everything the previous owner committed), and nobody
                # else writes between the two reads
                if self._lease is not None:
                    fence(cur, self._lease)
                cur.execute(
                    "SELECT message, queued FROM vmrsched_outqueue"
                    " WHERE integration = %s ORDER BY seq",
                    (self.integration,),
                )
                for raw, queued in cur.fetchall():
                    message = Outgoing.from_json(raw)
                    pending[message.id] = Queued(message, queued.timestamp())
                cur.execute(
                    "SELECT message, reason, failed FROM vmrsched_outqueue_failed"
                    " WHERE integration = %s ORDER BY seq",
                    (self.integration,),
                )
                for raw, reason, at in cur.fetchall():
                    message = Outgoing.from_json(raw)
                    failed[message.id] = Failed(message, str(reason), at.timestamp())
        except psycopg.Error as exc:
            self._drop()
            raise DatabaseUnavailable(
                f"{self.integration}: the out-queue cannot be read: {exc}"
            ) from exc
        self._pending, self._failed, self._stale = pending, failed, False

    @contextlib.contextmanager
    def _writing(self) -> Iterator[psycopg.Cursor[Any]]:
        """One write transaction, fenced by the lease first, committed (durable) when the block
        ends; the caller changes the view only after that. LeaseLost: nothing landed.
        DatabaseUnavailable: the database may or may not hold the change (a commit whose answer
        was lost), so the view is read again before the next call."""
        try:
            conn = self._connection()
            with conn.transaction(), conn.cursor() as cur:
                if self._lease is not None:
                    fence(cur, self._lease)
                yield cur
        except LeaseLost:
            raise  # refused before anything was written: the view is still the database's
        except psycopg.Error as exc:
            self._stale = True
            self._drop()
            raise DatabaseUnavailable(
                f"{self.integration}: the database did not take the out-queue's change: {exc}"
            ) from exc
        except BaseException:
            self._stale = True
            raise

    def _seen_rows(self, cur: psycopg.Cursor[Any], ids: list[str], at: float) -> set[str]:
        """Mark `ids` seen at `at`; the ids that were not seen before (only those may be
        queued)."""
        cur.execute(
            "INSERT INTO vmrsched_outqueue_seen (integration, id, seen)"
            " SELECT %s, id, %s FROM unnest(%s::text[]) AS id"
            " ON CONFLICT (integration, id) DO NOTHING RETURNING id",
            (self.integration, _when(at), ids),
        )
        return {str(row[0]) for row in cur.fetchall()}

    def _queue_rows(self, cur: psycopg.Cursor[Any], messages: list[Outgoing], at: float) -> None:
        """Queue `messages` in this order (one statement each: `seq` follows it)."""
        cur.executemany(
            "INSERT INTO vmrsched_outqueue (integration, id, message, queued)"
            " VALUES (%s, %s, %s, %s)",
            [(self.integration, m.id, _jsonb(m), _when(at)) for m in messages],
        )

    # the seen rows pruning may drop: never those of a message still queued or failed (their
    # foreign keys would refuse it; they stay seen for as long as they are there)
    _UNHELD = """
               AND NOT EXISTS (SELECT 1 FROM vmrsched_outqueue q
                                WHERE q.integration = s.integration AND q.id = s.id)
               AND NOT EXISTS (SELECT 1 FROM vmrsched_outqueue_failed f
                                WHERE f.integration = s.integration AND f.id = s.id)
    """

    def _forget_old(self, cur: psycopg.Cursor[Any], now: float) -> None:
        """Forget the seen ids past SEEN_DAYS: before an add marks its ids seen, so that one
        forgotten is a new message, as in the file queue (which prunes when it opens)."""
        cur.execute(
            "DELETE FROM vmrsched_outqueue_seen s WHERE s.integration = %(i)s"
            " AND s.seen < %(horizon)s" + self._UNHELD,
            {"i": self.integration, "horizon": _when(now - SEEN_DAYS * 86400)},
        )

    def _forget_beyond_max(self, cur: psycopg.Cursor[Any]) -> None:
        """Keep the newest SEEN_MAX seen ids (those just added among them)."""
        cur.execute(
            """
            DELETE FROM vmrsched_outqueue_seen s
             WHERE s.integration = %(i)s
               AND s.id IN (SELECT id FROM vmrsched_outqueue_seen
                             WHERE integration = %(i)s
                             ORDER BY seen DESC, id DESC OFFSET %(max)s)
            """
            + self._UNHELD,
            {"i": self.integration, "max": SEEN_MAX},
        )

    # --- the queue ------------------------------------------------------------------------

    def add(self, messages: Iterable[Outgoing]) -> set[str]:
        """Queue durably (returns after the commit) the messages whose id was never seen.
        Returns the ids of the given messages that are pending now, each with the same inbox
        item as the pending copy (see OutQueue.add)."""
        given = list(messages)
        self._fresh()
        # the first copy of each id the view holds neither queued nor failed (those are seen)
        first: dict[str, Outgoing] = {}
        for message in given:
            if message.id not in self._pending and message.id not in self._failed:
                first.setdefault(message.id, message)
        if first:
            now = self.clock()
            at = _exact(now)
            prune = (
                self._pruned_at is None
                or now - self._pruned_at >= PRUNE_EVERY
                or self._seen_since_prune >= SEEN_MAX // 10
            )
            with self._writing() as cur:
                if prune:
                    self._forget_old(cur, now)
                new = self._seen_rows(cur, list(first), at)
                queued = [m for m in first.values() if m.id in new]
                if queued:
                    self._queue_rows(cur, queued, at)
                if prune:
                    self._forget_beyond_max(cur)
            for message in queued:
                self._pending[message.id] = Queued(message, at)
            self._seen_since_prune += len(new)
            if prune:
                self._pruned_at, self._seen_since_prune = now, 0
        pending: set[str] = set()
        for message in given:
            item = self._pending.get(message.id)
            if item is not None and item.message.extra.get("item_id") == message.extra.get(
                "item_id"
            ):
                pending.add(message.id)
        return pending

    def seen(self, message_id: str) -> bool:
        """Whether the id was queued before (pending, delivered or failed, within SEEN_DAYS):
        asked of the database, which keeps the seen ids."""
        self._fresh()
        if message_id in self._pending or message_id in self._failed:
            return True
        try:
            conn = self._connection()
            row = conn.execute(
                "SELECT 1 FROM vmrsched_outqueue_seen WHERE integration = %s AND id = %s",
                (self.integration, message_id),
            ).fetchone()
        except psycopg.Error as exc:
            self._drop()
            raise DatabaseUnavailable(
                f"{self.integration}: the out-queue cannot be read: {exc}"
            ) from exc
        return row is not None

    def done(self, ids: Iterable[str]) -> None:
        """Forget delivered messages, durably (one commit for all of them); their ids stay
        seen, so they are never queued again."""
        wanted = list(ids)
        self._fresh()
        delivered = [i for i in dict.fromkeys(wanted) if i in self._pending]
        if not delivered:
            return
        with self._writing() as cur:
            cur.execute(
                "DELETE FROM vmrsched_outqueue WHERE integration = %s AND id = ANY(%s)",
                (self.integration, delivered),
            )
        for message_id in delivered:
            del self._pending[message_id]

    def fail(self, message_id: str, reason: str, replacement: Outgoing | None = None) -> None:
        """Give up on a message for good, keeping it with its reason; `replacement` is queued
        (unless its id was seen) in the same commit, and named beside the failure."""
        self._fresh()
        item = self._pending.get(message_id)
        if item is None:
            return
        at = _exact(self.clock())
        kept = [i for i in self._failed if i != message_id]
        dropped = kept[: max(0, len(kept) + 1 - FAILED_MAX)]  # the oldest beyond FAILED_MAX
        with self._writing() as cur:
            cur.execute(
                "DELETE FROM vmrsched_outqueue WHERE integration = %s AND id = %s",
                (self.integration, message_id),
            )
            cur.execute(
                "DELETE FROM vmrsched_outqueue_failed WHERE integration = %s AND id = ANY(%s)",
                (self.integration, [message_id, *dropped]),
            )
            cur.execute(
                "INSERT INTO vmrsched_outqueue_failed"
                " (integration, id, message, reason, failed, replacement)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                (
                    self.integration,
                    message_id,
                    _jsonb(item.message),
                    reason,
                    _when(at),
                    replacement.id if replacement is not None else None,
                ),
            )
            replaced = None
            if replacement is not None and self._seen_rows(cur, [replacement.id], at):
                replaced = replacement
                self._queue_rows(cur, [replacement], at)
        del self._pending[message_id]
        for old in (message_id, *dropped):
            self._failed.pop(old, None)
        self._failed[message_id] = Failed(item.message, reason, at)
        if replaced is not None:
            self._pending[replaced.id] = Queued(replaced, at)

    def retry(self, message_id: str) -> bool:
        """An admin's retry: a failed message goes back at the end of the queue, durably, seen
        anew from now (False when no failed message has that id)."""
        self._fresh()
        item = self._failed.get(message_id)
        if item is None:
            return False
        at = _exact(self.clock())
        with self._writing() as cur:
            cur.execute(
                "DELETE FROM vmrsched_outqueue_failed WHERE integration = %s AND id = %s",
                (self.integration, message_id),
            )
            cur.execute(
                "INSERT INTO vmrsched_outqueue_seen (integration, id, seen) VALUES (%s, %s, %s)"
                " ON CONFLICT (integration, id) DO UPDATE SET seen = EXCLUDED.seen",
                (self.integration, message_id, _when(at)),
            )
            self._queue_rows(cur, [item.message], at)
        del self._failed[message_id]
        self._pending[message_id] = Queued(item.message, at)
        return True

    def discard(self, message_id: str) -> bool:
        """An admin's discard: a failed or queued message is dropped for good, durably (its id
        stays seen, so it is never queued again). False when there is no such message."""
        self._fresh()
        if message_id not in self._failed and message_id not in self._pending:
            return False
        with self._writing() as cur:
            cur.execute(
                "DELETE FROM vmrsched_outqueue WHERE integration = %s AND id = %s",
                (self.integration, message_id),
            )
            cur.execute(
                "DELETE FROM vmrsched_outqueue_failed WHERE integration = %s AND id = %s",
                (self.integration, message_id),
            )
        self._failed.pop(message_id, None)
        self._pending.pop(message_id, None)
        return True

    def contents(self) -> tuple[list[Queued], list[Failed]]:
        """What is queued (oldest first, with since when) and what failed: for the admin pages."""
        self._fresh()
        return sorted(self._pending.values(), key=lambda q: q.at), list(self._failed.values())

    def pending(self) -> list[Outgoing]:
        self._fresh()
        return [q.message for q in self._pending.values()]

    def failed(self) -> list[Failed]:
        self._fresh()
        return list(self._failed.values())

    def __len__(self) -> int:
        self._fresh()
        return len(self._pending)


def read_contents(connect: Connect, integration: str) -> tuple[list[Queued], list[Failed]]:
    """`contents` of an integration's queue read without owning it (the admin pages of an
    integration another instance runs, or none): a read, so no lease is needed."""
    queue = DatabaseOutQueue(connect, integration)
    try:
        return queue.contents()
    finally:
        queue.close()


def read_failed(connect: Connect, integration: str) -> list[Failed]:
    """Failed messages of an integration's queue, read without owning it (`vmrsched failed`
    beside a running service)."""
    return read_contents(connect, integration)[1]


def failed_everywhere(connect: Connect) -> dict[str, list[Failed]]:
    """Every integration's failed messages in the order they failed (`vmrsched failed` on the
    database backend: a read, beside running instances, no lease needed)."""
    found: dict[str, list[Failed]] = {}
    try:
        with connect() as conn, conn.transaction(), conn.cursor() as cur:
            cur.execute(
                "SELECT integration, message, reason, failed FROM vmrsched_outqueue_failed"
                " ORDER BY integration, seq"
            )
            for integration, raw, reason, at in cur.fetchall():
                found.setdefault(str(integration), []).append(
                    Failed(Outgoing.from_json(raw), str(reason), at.timestamp())
                )
    except psycopg.Error as exc:
        raise DatabaseUnavailable(f"the out-queues cannot be read: {exc}") from exc
    return found
