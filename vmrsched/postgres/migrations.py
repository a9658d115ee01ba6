"""Versioned schema migrations, applied when an instance starts (and by `vmrsched store migrate`),
never by hand.

Each migration is a number, a title and SQL; the database records which it has applied, with a
checksum of the SQL, in `vmrsched_schema`. Several instances may start at once: a transaction-
scoped advisory lock lets one of them migrate while the others wait and then find nothing to do.
A database migrated by a newer release (a version this one does not know) is refused rather than
written with an older idea of the schema; a migration whose SQL changed after it was applied is
refused too (a release must add a migration, never edit one)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import psycopg

# pg_advisory_xact_lock key: "vmrsched" as the first 8 bytes, so other applications' locks
# on the same database do not collide with it
LOCK_KEY = int.from_bytes(b"vmrsched", "big") & 0x7FFF_FFFF_FFFF_FFFF


@dataclass(frozen=True)
class Migration:
    version: int
    title: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


class SchemaError(RuntimeError):
    """The database's schema cannot be used by this release (newer, or edited)."""


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "leases, instances, records and the service-wide alias constraints",
        """
        CREATE TABLE vmrsched_instances (
            instance text PRIMARY KEY,
            seen timestamptz NOT NULL,
            started timestamptz NOT NULL
        );
        CREATE TABLE vmrsched_leases (
            integration text PRIMARY KEY,
            owner text NOT NULL,
            token bigint NOT NULL,
            expires timestamptz NOT NULL,
            acquired timestamptz NOT NULL
        );
        CREATE TABLE vmrsched_records (
            integration text NOT NULL,
            alias_id text NOT NULL,
            alias text NOT NULL,
            numeric_alias text NOT NULL,
            archived boolean NOT NULL DEFAULT false,
            record jsonb NOT NULL,
            written bigint NOT NULL,
            PRIMARY KEY (integration, alias_id)
        );
        CREATE UNIQUE INDEX vmrsched_records_alias ON vmrsched_records (lower(alias));
        CREATE UNIQUE INDEX vmrsched_records_numeric ON vmrsched_records (numeric_alias);
        CREATE INDEX vmrsched_records_live ON vmrsched_records (integration) WHERE NOT archived;
        """,
    ),
    Migration(
        2,
        "the notifier's out-queue: seen ids, queued and failed messages",
        # Every queued or failed message's id is a row of vmrsched_outqueue_seen (foreign
        # keys), and a message is queued only in the transaction that inserted its seen row: the
        # seen table's primary key is what makes an id never queued twice, whichever instance
        # tries. Seen rows of messages still queued or failed are never pruned (the keys refuse
        # it). `seq` orders the queue and the failures as they came; the CHECKs keep the id
        # columns and the messages they key in step. Times are the owner's clock, as the file
        # queue's are.
        """
        CREATE TABLE vmrsched_outqueue_seen (
            integration text NOT NULL,
            id text NOT NULL,
            seen timestamptz NOT NULL,
            PRIMARY KEY (integration, id)
        );
        CREATE INDEX vmrsched_outqueue_seen_age ON vmrsched_outqueue_seen (integration, seen);
        CREATE TABLE vmrsched_outqueue (
            integration text NOT NULL,
            id text NOT NULL,
            message jsonb NOT NULL CHECK (message ->> 'id' = id),
            queued timestamptz NOT NULL,
            seq bigint GENERATED ALWAYS AS IDENTITY,
            PRIMARY KEY (integration, id),
            FOREIGN KEY (integration, id) REFERENCES vmrsched_outqueue_seen (integration, id)
        );
        CREATE INDEX vmrsched_outqueue_order ON vmrsched_outqueue (integration, seq);
        CREATE TABLE vmrsched_outqueue_failed (
            integration text NOT NULL,
            id text NOT NULL,
            message jsonb NOT NULL CHECK (message ->> 'id' = id),
            reason text NOT NULL,
            failed timestamptz NOT NULL,
            replacement text,
            seq bigint GENERATED ALWAYS AS IDENTITY,
            PRIMARY KEY (integration, id),
            FOREIGN KEY (integration, id) REFERENCES vmrsched_outqueue_seen (integration, id)
        );
        CREATE INDEX vmrsched_outqueue_failed_order
            ON vmrsched_outqueue_failed (integration, seq);
        COMMENT ON COLUMN vmrsched_outqueue_failed.replacement IS
            'id of the message queued in its stead (the joining instructions by mail), if any';
        """,
    ),
    Migration(
        3,
        "a change number per record write, for the instances that follow what others own",
        # Every insert or update of a record takes the next number of one sequence, so an
        # instance keeps its policy index of the integrations other instances run current by
        # reading what changed since the highest number it has seen.
        """
        CREATE SEQUENCE vmrsched_records_changes;
        ALTER TABLE vmrsched_records
            ADD COLUMN changed bigint NOT NULL DEFAULT nextval('vmrsched_records_changes');
        CREATE INDEX vmrsched_records_changed ON vmrsched_records (changed);
        CREATE FUNCTION vmrsched_records_touch() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            NEW.changed := nextval('vmrsched_records_changes');
            RETURN NEW;
        END
        $$;
        CREATE TRIGGER vmrsched_records_touch BEFORE UPDATE ON vmrsched_records
            FOR EACH ROW EXECUTE FUNCTION vmrsched_records_touch();
        """,
    ),
    Migration(
        4,
        "where each instance serves, and the secrets the instances share",
        # An instance that is asked for an integration another one owns passes the request on
        # to the owner's address; the instances prove to each other that a passed-on request
        # comes from one of them with a key only the database holds (created once by the first
        # instance that needs it, from the operating system's random source).
        """
        ALTER TABLE vmrsched_instances ADD COLUMN url text NOT NULL DEFAULT '';
        CREATE TABLE vmrsched_secrets (
            name text PRIMARY KEY,
            value bytea NOT NULL,
            created timestamptz NOT NULL DEFAULT now()
        );
        """,
    ),
    Migration(
        5,
        "every other piece of state the service owns: decisions, sign-ins, token caches, Graph",
        # What each instance kept in its data_dir until now, so that any instance serves any
        # request and the owner after a takeover continues from what the last one wrote:
        # - the decisions log of each integration (bounded by the writer to its newest entries;
        #   `seq` orders them as they were written);
        # - the user sign-in's sessions (by the SHA-256 of their token, never the token; the
        #   refresh token inside encrypted with the key in vmrsched_secrets) and the admins'
        #   console sessions (by digest too), each with the time it can be cleaned up after;
        # - the sign-ins in progress between the redirect to the provider and its callback (by
        #   the digest of their state; taken once, by whichever instance the callback reaches);
        # - each integration's service-account token cache (msal's, EWS oauth_delegated) with
        #   the identity it belongs to, and the Graph backend's state (subscription, delta
        #   link): written by the integration's owner only, fenced by its lease.
        """
        CREATE TABLE vmrsched_decisions (
            integration text NOT NULL,
            seq bigint GENERATED ALWAYS AS IDENTITY,
            entry jsonb NOT NULL,
            PRIMARY KEY (integration, seq)
        );
        CREATE TABLE vmrsched_user_sessions (
            integration text NOT NULL,
            digest text NOT NULL,
            entry jsonb NOT NULL,
            touched timestamptz NOT NULL,
            PRIMARY KEY (integration, digest)
        );
        CREATE INDEX vmrsched_user_sessions_age ON vmrsched_user_sessions (touched);
        CREATE TABLE vmrsched_admin_sessions (
            digest text PRIMARY KEY,
            who text NOT NULL,
            expires timestamptz NOT NULL
        );
        CREATE INDEX vmrsched_admin_sessions_expiry ON vmrsched_admin_sessions (expires);
        CREATE TABLE vmrsched_sign_in_attempts (
            digest text PRIMARY KEY,
            context text NOT NULL,
            attempt jsonb NOT NULL,
            expires timestamptz NOT NULL
        );
        CREATE INDEX vmrsched_sign_in_attempts_expiry ON vmrsched_sign_in_attempts (expires);
        CREATE TABLE vmrsched_token_caches (
            integration text PRIMARY KEY,
            cache text NOT NULL,
            identity jsonb,
            written timestamptz NOT NULL
        );
        CREATE TABLE vmrsched_graph_state (
            integration text PRIMARY KEY,
            state jsonb NOT NULL,
            written timestamptz NOT NULL
        );
        """,
    ),
)


def known_version() -> int:
    return MIGRATIONS[-1].version


def _applied(cur: psycopg.Cursor[Any]) -> dict[int, str]:
    cur.execute(
        """
        CREATE TABLE IF NOT EXISTS vmrsched_schema (
            version integer PRIMARY KEY,
            title text NOT NULL,
            checksum text NOT NULL,
            applied timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    cur.execute("SELECT version, checksum FROM vmrsched_schema ORDER BY version")
    return {int(version): str(checksum) for version, checksum in cur.fetchall()}


def migrate(conn: psycopg.Connection[Any]) -> list[int]:
    """Bring the schema to this release's version in one transaction; the versions applied.
    SchemaError when the database is newer than this release or a migration was edited."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        applied = _applied(cur)
        newer = sorted(v for v in applied if v > known_version())
        if newer:
            raise SchemaError(
                f"the database schema is at version {max(newer)}, newer than this release "
                f"knows ({known_version()}): run the newer release, or restore the database"
            )
        done: list[int] = []
        for migration in MIGRATIONS:
            recorded = applied.get(migration.version)
            if recorded is not None:
                if recorded != migration.checksum:
                    raise SchemaError(
                        f"schema migration {migration.version} ({migration.title}) differs from "
                        "the one applied to this database: migrations are never edited"
                    )
                continue
            cur.execute(migration.sql.encode())  # our own constant SQL, no parameters
            cur.execute(
                "INSERT INTO vmrsched_schema (version, title, checksum) VALUES (%s, %s, %s)",
                (migration.version, migration.title, migration.checksum),
            )
            done.append(migration.version)
        return done


def version(conn: psycopg.Connection[Any]) -> int:
    """The schema version the database is at (0: never migrated)."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SELECT to_regclass('vmrsched_schema') IS NOT NULL")
        row = cur.fetchone()
        if row is None or not row[0]:
            return 0
        cur.execute("SELECT coalesce(max(version), 0) FROM vmrsched_schema")
        found = cur.fetchone()
        return int(found[0]) if found else 0
