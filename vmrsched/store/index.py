"""The store's memory of one integration: every active record by alias ID, the indexes lookups
need (numeric alias, alias, meeting UID, placeholder, conference name, open reservations per
user), what is kept of archived aliases, and the queries and draws a decision makes. Only
`Store` (journaled.py) changes it, in step with its journal; it holds no file."""

from __future__ import annotations

from collections.abc import Iterator

from vmrsched.rules import aliases
from vmrsched.rules.aliases import RandomSource
from vmrsched.rules.meetings import AliasRecord, MeetingState, Status
from vmrsched.store.records import ArchivedInfo, StoredRecord, archived_info, to_alias_record


class StoreIndex:
    """Aliases and numeric aliases are keyed as `aliases.normalise` keys what is dialled or
    typed (case-folded): our own never carry a scheme, brackets or parameters."""

    def __init__(self, rng: RandomSource | None = None) -> None:
        self.rng = rng
        self._records: dict[str, StoredRecord] = {}
        self._by_numeric: dict[str, str] = {}
        self._by_alias: dict[str, str] = {}
        self._by_uid: dict[str, str] = {}
        self._by_placeholder: dict[str, str] = {}
        self._names: dict[str, str] = {}
        self._archived: dict[str, ArchivedInfo] = {}
        self._archived_numeric: set[str] = set()
        # numeric aliases both active and archived (an archived alias brought back): so that
        # aliases_taken counts each once without building the union
        self._taken_twice = 0
        # per user, how many reservations they hold that are in no meeting yet (the quota)
        self._open_by_user: dict[str, int] = {}
        # records changed since take_changes (archived ones with status "archived"): what the
        # allocator publishes to the policy index after a commit
        self._changed: dict[str, StoredRecord] = {}
        self._loaded = False  # from then on, changes are noted for publishing
        self._archived_placeholder: dict[str, str] = {}
        # aliases drawn for a decision and not stored yet (by alias id; forgotten at commit)
        self._drawn: dict[str, aliases.Alias] = {}

    # --- keeping the indexes ------------------------------------------------------------------

    def _note_archived(self, record: StoredRecord) -> None:
        self._unindex(record["alias_id"])
        self._archived[record["alias_id"]] = archived_info(record)
        if self._loaded:
            self._changed[record["alias_id"]] = {**record, "status": "archived"}
        self._archived_numeric.add(record["numeric_alias"].casefold())
        if record.get("placeholder_id"):
            self._archived_placeholder[record["placeholder_id"]] = record["alias_id"]

    def _index(self, record: StoredRecord) -> None:
        alias_id = record["alias_id"]
        old = self._records.get(alias_id)
        if old is not None:
            self._drop_secondary(old)
        self._records[alias_id] = record
        if self._loaded:
            self._changed[alias_id] = record
        numeric = record["numeric_alias"].casefold()
        if numeric not in self._by_numeric and numeric in self._archived_numeric:
            self._taken_twice += 1
        self._by_numeric[numeric] = alias_id
        self._count_open(record, 1)
        self._by_alias[record["alias"].casefold()] = alias_id
        if record.get("meeting_uid") and record["status"] == "bound":
            self._by_uid[record["meeting_uid"]] = alias_id
        if record.get("placeholder_id"):
            self._by_placeholder[record["placeholder_id"]] = alias_id
        if record.get("name"):
            self._names[record["name"].lower()] = alias_id

    def _count_open(self, record: StoredRecord, step: int) -> None:
        """Keep the per-user count of open reservations with each record that enters or
        leaves the index (a record is replaced whole when it is bound or deleted)."""
        user = record.get("user")
        if not user or record["status"] != "reserved":
            return
        held = self._open_by_user.get(user, 0) + step
        if held > 0:
            self._open_by_user[user] = held
        else:
            self._open_by_user.pop(user, None)

    def _drop_secondary(self, record: StoredRecord) -> None:
        self._count_open(record, -1)
        alias_id = record["alias_id"]
        uid = record.get("meeting_uid")
        if uid and self._by_uid.get(uid) == alias_id:
            del self._by_uid[uid]
        name = (record.get("name") or "").lower()
        if name and self._names.get(name) == alias_id:
            del self._names[name]

    def _unindex(self, alias_id: str) -> None:
        record = self._records.pop(alias_id, None)
        if record is None:
            return
        self._drop_secondary(record)
        numeric = record["numeric_alias"].casefold()
        if self._by_numeric.pop(numeric, None) is not None and numeric in self._archived_numeric:
            self._taken_twice -= 1
        self._by_alias.pop(record["alias"].casefold(), None)
        if record.get("placeholder_id"):
            self._by_placeholder.pop(record["placeholder_id"], None)

    # --- queries ------------------------------------------------------------------------------

    def get(self, alias_id: str) -> StoredRecord | None:
        return self._records.get(alias_id)

    def by_meeting_uid(self, uid: str) -> StoredRecord | None:
        alias_id = self._by_uid.get(uid)
        return self._records.get(alias_id) if alias_id else None

    def meeting_uids(self) -> set[str]:
        """Every meeting UID the store holds a record of, whatever became of it (bound,
        cancelled, deleted by an admin, archived): recovery re-binds only meetings the store
        has lost, never one whose alias was deleted on purpose."""
        uids = {r["meeting_uid"] for r in self._records.values() if r.get("meeting_uid")}
        uids.update(i.meeting_uid for i in self._archived.values() if i.meeting_uid)
        return uids

    def by_alias(self, alias: str) -> StoredRecord | None:
        """The record of an alias or numeric alias as an admin types it or a node dials it
        (`sip:VMR123@Example.com`, `<h323:vmr123>`: see aliases.normalise)."""
        key = aliases.normalise(alias)
        alias_id = self._by_alias.get(key) or self._by_numeric.get(key)
        return self._records.get(alias_id) if alias_id else None

    def archived(self, alias_id: str) -> ArchivedInfo | None:
        return self._archived.get(alias_id)

    def take_changes(self) -> list[StoredRecord]:
        """The records changed since the last call (once committed: what may be published)."""
        changed, self._changed = self._changed, {}
        return list(changed.values())

    def archived_aliases(self) -> Iterator[tuple[str, ArchivedInfo]]:
        return iter(list(self._archived.items()))

    def numeric_taken(self, numeric_alias: str) -> bool:
        key = numeric_alias.casefold()
        return key in self._by_numeric or key in self._archived_numeric

    def open_reservations(self, user: str) -> int:
        """How many reservations `user` holds that are in no meeting yet (expired ones count
        until the sweep deletes them). O(1): the add-in API asks it on every reservation."""
        return self._open_by_user.get(user, 0)

    def aliases_taken(self) -> int:
        """How many numeric aliases can no longer be drawn: every active one and every
        archived one (never handed out again). O(1)."""
        return len(self._by_numeric) + len(self._archived_numeric) - self._taken_twice

    def records(self) -> Iterator[StoredRecord]:
        return iter(list(self._records.values()))

    def __len__(self) -> int:
        return len(self._records)

    # --- the decision view --------------------------------------------------------------------

    def alias_record(self, alias_id: str | None) -> AliasRecord | None:
        """The decision view of an alias, active or archived."""
        if alias_id is None:
            return None
        record = self._records.get(alias_id)
        if record is not None:
            return to_alias_record(record)
        info = self._archived.get(alias_id)
        if info is None:
            return None
        status: Status = "bound" if info.status == "bound" else "deleted"
        return AliasRecord(
            alias_id,
            "",
            "",
            status,
            meeting_uid=info.meeting_uid,
            sequence=info.sequence,
            organizer=info.organizer,
            reason=info.reason,
        )

    def state_for(
        self,
        token: aliases.Token | None,
        meeting_uid: str,
        spec: tuple[str, int, str] | None = None,
    ) -> MeetingState:
        """The decision view of one meeting. With `spec` (prefix, suffix length, domain), a
        placeholder that has no alias yet gets one drawn (`fresh`), so the decision and its
        answer are made before anything is written."""
        token_record: AliasRecord | None = None
        fresh: AliasRecord | None = None
        if token is not None:
            if token.kind == "PXPS":
                token_record = self.alias_record(token.id)
            else:
                alias_id = self._by_placeholder.get(token.id) or self._archived_placeholder.get(
                    token.id
                )
                token_record = self.alias_record(alias_id)
                if token_record is None and spec is not None:
                    fresh = self.draw(*spec)
        uid_record = self.alias_record(self._by_uid.get(meeting_uid))
        return MeetingState(token_record, uid_record, fresh)

    def draw(self, prefix: str, suffix_length: int, domain: str) -> AliasRecord:
        """A new alias, unique among stored and drawn ones, not stored: an action `bind_new`
        naming it stores it (until the next commit)."""
        alias = aliases.generate_alias(prefix, suffix_length, domain, self._drawn_taken, self.rng)
        self._drawn[alias.alias_id] = alias
        return AliasRecord(alias.alias_id, alias.alias, alias.numeric_alias, "reserved")

    def _drawn_taken(self, numeric_alias: str) -> bool:
        key = numeric_alias.casefold()
        return self.numeric_taken(key) or any(
            a.numeric_alias.casefold() == key for a in self._drawn.values()
        )

    def unique_name(self, base: str) -> str:
        """`base`, or `base` plus a random number when another conference has that name."""
        name = base.strip() or "Meeting"
        while name.lower() in self._names:
            name = f"{base.strip() or 'Meeting'} {aliases.random_digits(6, self.rng)}"
        return name
