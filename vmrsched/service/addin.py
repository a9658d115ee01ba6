"""The add-in's use cases: a single-use VMR (the meeting details the pane sent checked, an alias
reserved, its joining instructions rendered) and the signed-in user's personal VMRs (from the
integration's directory, rendered with the personal templates), plus the personal rooms of file
directories published to the policy index.

The reservation is the benchmarked path (bench/addin_api.py): everything built once per config
is cached per config (PerConfig), and a request costs one await on the allocator's batch and
one render. Nothing here knows HTTP: http/addin.py reads the request, asks `single_use_vmr`,
and writes its `Reservation` as JSON."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any

import orjson
import pykka

from vmrsched import directory
from vmrsched.actors.allocator import QuotaReached
from vmrsched.actors.bridge import ReservationBatcher
from vmrsched.actors.registry import ActorUnavailable
from vmrsched.config import IntegrationConfig, PerConfig, range_clashes
from vmrsched.directory import PersonalVmr
from vmrsched.errors import (
    BadRequest,
    Forbidden,
    NotFound,
    QuotaExceeded,
    Unauthorized,
    Unavailable,
)
from vmrsched.messages import answers
from vmrsched.rules import aliases
from vmrsched.service.runtime import Runtime
from vmrsched.signin.identity import Identity
from vmrsched.store import Record, StoreBrokenError
from vmrsched.templating import Renderer, plain_text

log = logging.getLogger("vmrsched.service")
reserved_log = logging.getLogger("vmrsched.addin")  # the name the add-in's log lines had

MAX_SAID = 10_000  # held personal aliases warned of, remembered so each is said once
RESERVE_TIMEOUT = 10.0  # seconds a reservation may wait for the allocator's batch
PERSONAL_REFRESH = 5.0  # seconds between looks at the personal directory files
INSTRUCTIONS = "single_use_joining_instructions_template"


@dataclass(frozen=True)  # no slots: orjson writes a plain dataclass twice as fast
class Reservation:
    """A single-use VMR reserved for the add-in: what the API answers (201), field for field and
    in this order (orjson writes a dataclass's fields in order; openapi.yaml: SingleUseVmr)."""

    alias: str
    numeric_alias: str
    alias_id: str  # as the meeting body carries it: PXPS:-<id>#
    joining_instructions: str  # HTML
    room_name: str  # the integration's room, which the pane invites
    room_email: str


def parse_time(value: object, key: str) -> datetime:
    """An ISO 8601 time with a zone offset from a JSON body, or ValueError naming the key."""
    if not isinstance(value, str):
        raise ValueError(f"{key} must be an ISO 8601 string")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"{key} is not an ISO 8601 time") from exc
    if moment.tzinfo is None:
        raise ValueError(f"{key} needs a time zone offset")
    if not 1900 <= moment.year <= 2999:  # as written; the API spec says the same
        raise ValueError(f"{key} is outside the years 1900-2999")
    try:
        moment.astimezone(UTC)
    except (OverflowError, ValueError) as exc:
        raise ValueError(f"{key} cannot be converted to UTC") from exc
    return moment


def meeting_details(raw: bytes) -> dict[str, Any]:
    """The optional meeting details the pane may send (JSON), as template variables for the
    templates that use them; ValueError for anything else."""
    if not raw or raw.isspace():  # as `not raw.strip()`, without the copy
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError("body is not JSON") from exc
    if not isinstance(body, dict):
        raise ValueError("body must be a JSON object")
    fields: dict[str, Any] = {}
    for key in ("subject", "organizer_name", "organizer_email"):
        if key in body:
            value = body[key]
            if not isinstance(value, str):
                raise ValueError(f"{key} must be a string")
            fields[key] = value[:1000]
    for key, name in (("start", "start_time"), ("end", "end_time")):
        if key in body:
            fields[name] = parse_time(body[key], key)
    return fields


# the variables a request's meeting details are checked with, before there is an alias
_SAMPLE_RECORD = {
    "alias_id": "00000000-0000-4000-8000-000000000000",
    "alias": "vmr0@example.com",
    "numeric_alias": "0",
}


class ReservedLog:
    """The log of the add-in's reservations: the ones answered in one event-loop turn (one
    group commit's) go out as one line, each with its alias and user. A line per reservation
    cost a sixth of the event loop's time under load."""

    def __init__(self) -> None:
        self._done: dict[str, list[tuple[str, str]]] = {}
        self._scheduled = False

    def add(self, integration: str, alias: str, user: str) -> None:
        if not reserved_log.isEnabledFor(logging.INFO):
            return
        self._done.setdefault(integration, []).append((alias, user))
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Log what was reserved since the last flush (the front end calls this when it stops,
        so that the last turn's reservations are logged too)."""
        self._scheduled = False
        done, self._done = self._done, {}
        for name, reserved in done.items():
            if len(reserved) == 1:
                alias, user = reserved[0]
                reserved_log.info(
                    "reserved %s for %s", alias, user, extra={"integration": name, "alias": alias}
                )
            else:
                reserved_log.info(
                    "reserved %d aliases: %s",
                    len(reserved),
                    ", ".join(f"{alias} for {user}" for alias, user in reserved),
                    extra={"integration": name},
                )


@dataclass(frozen=True)
class _Answer:
    """What every reservation of one integration's config answers with, built once per config:
    its renderer, the sample variables the meeting details are checked with, the variables
    that do not depend on the alias (answers.variables without a record), and its room."""

    renderer: Renderer
    samples: dict[str, Any]
    base: dict[str, Any]
    room_name: str
    room_email: str


def _capped_user(who: Identity | None) -> str:
    """Whose quota a reservation counts against: "" for unverified callers (not capped)."""
    return who.user if who is not None and who.kind != "none" else ""


def _unavailable() -> Unavailable:
    return Unavailable("the booking service cannot take requests right now")


class SingleUse:
    """Single-use VMRs: reserve an alias (durable before it returns) and answer the add-in."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._renderers = runtime.renderers
        self._batchers: dict[str, ReservationBatcher] = {}
        self._answers: PerConfig[_Answer] = PerConfig(
            lambda integ: _Answer(
                self._renderers(integ),
                answers.variables(integ, None, _SAMPLE_RECORD),
                answers.variables(integ, None, None),
                integ.exchange.mailbox_name,
                integ.exchange.mailbox_email,
            )
        )
        self.reserved_log = ReservedLog()

    async def single_use_vmr(
        self,
        integ: IntegrationConfig,
        who: Identity,
        read: Callable[[], Awaitable[bytes]] | None = None,
    ) -> Reservation:
        """Reserve a single-use VMR for `who` and render its joining instructions with the
        meeting details the pane sent. `read` gives the request's body (None: it has none);
        it is read only once the request may be served (a feature that is off is refused
        first). The details are checked as a render would check them before an alias is
        reserved: a request that cannot be answered must not leave an alias reserved behind
        it. Forbidden (feature off), BadRequest (details), and whatever `reserve` raises."""
        if not integ.enable_single_use_vmrs:
            raise Forbidden("single-use VMRs are not enabled", "feature_disabled")
        answer = self._answers(integ)
        renderer = answer.renderer
        # reading is the front end's: a body past its bound is its answer (413), not a detail
        raw = await read() if read is not None else None
        try:
            fields = meeting_details(raw) if raw is not None else {}
            # check_values never changes what it is given: the samples as they are without
            # details
            renderer.check_values(
                INSTRUCTIONS, {**answer.samples, **fields} if fields else answer.samples
            )
        except ValueError as exc:
            raise BadRequest(str(exc)) from exc
        except Exception as exc:
            log.exception("cannot render joining instructions for %s", integ.name)
            raise BadRequest("the meeting details cannot be used in the instructions") from exc
        try:  # as `reserve`
            allocator, batcher = self._allocator(integ.name)
            record: Record = await batcher.reserve(allocator, RESERVE_TIMEOUT, _capped_user(who))
        except (ActorUnavailable, TimeoutError, StoreBrokenError) as exc:
            raise _unavailable() from exc
        except QuotaReached as exc:
            raise self._quota_exceeded(integ.name, exc) from exc
        alias = record["alias"]
        numeric_alias = record["numeric_alias"]
        alias_id = aliases.alias_id_token(record["alias_id"])
        self.reserved_log.add(integ.name, alias, who.user)
        # answers.variables(integ, None, record) updated with the details, the part that does
        # not depend on the record computed once per config
        values = {
            **answer.base,
            "alias": alias,
            "numeric_alias": numeric_alias,
            "alias_uuid": alias_id if record["alias_id"] else "",
            **fields,
        }
        return Reservation(
            alias,
            numeric_alias,
            alias_id,
            renderer.render(INSTRUCTIONS, values),
            answer.room_name,
            answer.room_email,
        )

    async def reserve(self, name: str, timeout: float, who: Identity | None = None) -> Record:
        """Reserve one single-use alias for `who`, durable before it returns. Reservations
        arriving in the same event-loop turn share one message and one fsync
        (ReservationBatcher). A verified user holding the integration's cap of open
        reservations gets QuotaExceeded; unverified callers (token validation "none": every
        one of them is "anonymous", on loopback only) are not capped. (`single_use_vmr` does
        the same in its own frame: one coroutine fewer to resume.)"""
        try:
            allocator, batcher = self._allocator(name)
            record: Record = await batcher.reserve(allocator, timeout, _capped_user(who))
        except (ActorUnavailable, TimeoutError, StoreBrokenError) as exc:
            raise _unavailable() from exc
        except QuotaReached as exc:
            raise self._quota_exceeded(name, exc) from exc
        return record

    def _allocator(self, name: str) -> tuple[pykka.ActorRef[Any], ReservationBatcher]:
        """The integration's allocator and the batcher of its reservations; ActorUnavailable
        while the integration does not run."""
        ctx = self.runtime.ctx
        state = ctx.status.state(name)
        if state != "running":
            raise ActorUnavailable(f"integration {name} is {state or 'not running'}")
        allocator = ctx.registry.get(name, "allocator")
        batcher = self._batchers.get(name)
        if batcher is None:
            batcher = self._batchers[name] = ReservationBatcher()
        return allocator, batcher

    def _quota_exceeded(self, name: str, reached: QuotaReached) -> QuotaExceeded:
        """What a user at the cap is told: how many they hold, and how slots come free."""
        integ = self.runtime.config.integration(name)
        days = integ.reservation_ttl_days if integ is not None else 30
        return QuotaExceeded(
            f"You have {reached.held} video rooms reserved that are not in a meeting yet, the "
            f"most one person may hold ({reached.cap}). Use one of them in a meeting, or wait: "
            f"unused reservations expire {days} days after they were made, and an "
            "administrator can release them sooner."
        )

    def placeholder_instructions(self, integ: IntegrationConfig) -> str:
        """What the pane inserts when it cannot reach the API (with a `TOK:-` token)."""
        return self._renderers(integ).render(
            "placeholder_instructions_text", {"addin_server_domain": integ.addin.server_fqdn}
        )


class Personal:
    """Personal VMRs: the signed-in user's rooms, and file directories' rooms for the policy
    index."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._renderers = runtime.renderers
        self._directories: PerConfig[directory.Directory] | None = None
        self._rendered: dict[tuple[int, Any], tuple[IntegrationConfig, dict[str, Any]]] = {}
        self._served: set[str] = set()
        self._said_held: set[tuple[str, str]] = set()  # (integration, alias) warned of

    async def personal_vmrs(
        self, integ: IntegrationConfig, who: Identity, demo_user: str = ""
    ) -> list[dict[str, Any]]:
        """The signed-in user's personal VMRs, rendered with the personal templates.
        Forbidden when personal VMRs are off; Unauthorized (sign_in_required) when the token
        names no email; NotFound (user_unknown); Unavailable (directory_unavailable)."""
        if not integ.enable_personal_vmrs:
            raise Forbidden("personal VMRs are not enabled", "feature_disabled")
        email = who.email or (demo_user if who.kind == "none" else "")
        if not email:
            raise Unauthorized(
                plain_text(integ.addin.error_signing_in_message)
                + " (the add-in token does not name the user's email)",
                "sign_in_required",
            )
        source = self.directory(integ)
        try:
            vmrs = source.peek(email)
            if vmrs is None:
                vmrs = await asyncio.to_thread(source.vmrs_of, email)
        except directory.UserUnknown as exc:
            raise NotFound(
                plain_text(integ.addin.error_getting_personal_vmrs_message), "user_unknown"
            ) from exc
        except directory.DirectoryUnavailable as exc:
            log.warning("personal VMRs of %s: %s", email, exc, extra={"integration": integ.name})
            raise Unavailable(
                plain_text(integ.addin.error_getting_personal_vmrs_message),
                "directory_unavailable",
            ) from exc
        return [self._rendered_vmr(integ, vmr) for vmr in self._unheld(integ.name, vmrs)]

    def _unheld(self, name: str, vmrs: list[PersonalVmr]) -> list[PersonalVmr]:
        """The rooms without any alias a single-use booking holds: the policy endpoint answers
        such an alias for the booking, so the pane must not offer it as the user's room. A
        directory read before the integrations' aliases were loaded (at a start) was checked
        without them; each request looks again. Logged once per alias; a room left with no
        alias is not offered."""
        index = self.runtime.ctx.alias_index
        kept: list[PersonalVmr] = []
        for vmr in vmrs:
            owners = {alias: index.owner(alias) for alias in vmr.aliases}
            held = [alias for alias, owner in owners.items() if owner is not None]
            if not held:
                kept.append(vmr)
                continue
            for alias in held:
                if (name, alias) not in self._said_held and len(self._said_held) < MAX_SAID:
                    self._said_held.add((name, alias))
                    log.warning(
                        "personal VMRs: %s's room %r is not offered with alias %r: a single-use "
                        "alias of integration %r (a booking holds it); give the room another "
                        "alias in the directory",
                        vmr.owner_email,
                        vmr.name,
                        alias,
                        owners[alias],
                        extra={"integration": name},
                    )
            rest = tuple(alias for alias in vmr.aliases if alias not in held)
            if rest:
                kept.append(replace(vmr, aliases=rest))
        return kept

    def _rendered_vmr(self, integ: IntegrationConfig, vmr: directory.PersonalVmr) -> dict[str, Any]:
        """A VMR rendered with the integration's personal templates, remembered (the same VMR
        and config render the same; a reload brings a new config object, a changed VMR is a
        new key)."""
        key = (id(integ), vmr)
        done = self._rendered.get(key)
        if done is not None and done[0] is integ:
            return done[1]
        renderer = self._renderers(integ)
        values = directory.template_values(vmr, answers.joining_domain(integ))
        rendered = {
            "name": renderer.render("name_template", values),
            "description": renderer.render("description_template", values),
            "joining_instructions": renderer.render("joining_instructions_template", values),
            "location": renderer.render("location_template", values),
            "aliases": list(vmr.aliases),
        }
        if len(self._rendered) >= 50_000:
            self._rendered.clear()
        self._rendered[key] = (integ, rendered)
        return rendered

    def directory(self, integ: IntegrationConfig) -> directory.Directory:
        if self._directories is None:
            base = self.runtime.base_dir
            self._directories = PerConfig(
                lambda i: directory.directory_for(i, base, partial(self._clashes, i.name))
            )
        return self._directories(integ)

    def _clashes(self, name: str, users: dict[str, list[PersonalVmr]]) -> list[str]:
        """What keeps a changed directory file from being taken beyond the file itself, as
        check-config would refuse it at the next start: a room's alias inside a single-use
        range of the running config, or one a single-use booking holds (handed out under a
        prefix since changed)."""
        integ = self.runtime.config.integration(name)
        shown = integ.personal.directory_file if integ is not None else "the directory file"
        rooms = [
            (alias, f"{shown}: {email}'s room {vmr.name!r}")
            for email, vmrs in users.items()
            for vmr in vmrs
            for alias in vmr.aliases
        ]
        problems = range_clashes(rooms, self.runtime.config.integrations)
        index = self.runtime.ctx.alias_index
        for alias, whose in rooms:
            owner = index.owner(alias)
            if owner is not None:
                problems.append(
                    f"{whose}: alias {alias!r} is a single-use alias of integration "
                    f"{owner!r} (reserved, in a meeting, or kept after it): one alias would "
                    "reach two rooms; give the room another alias"
                )
        return problems

    def refresh(self) -> None:
        """The personal VMRs of file directories to the policy index, so that a node asking
        for one gets its settings (a node cannot route a room its own database lacks); the
        file is read again only when it changed. Rooms of the `pexip` source live on Pexip:
        the node finds them there. Runs again every PERSONAL_REFRESH seconds."""
        ctx = self.runtime.ctx
        try:
            served = set()
            for integ in self.runtime.config.integrations:
                if not integ.enable_personal_vmrs or integ.personal.source != "file":
                    continue
                served.add(integ.name)
                source = self.directory(integ)
                try:
                    vmrs = source.rooms() if isinstance(source, directory.FileDirectory) else None
                except directory.DirectoryUnavailable as exc:
                    log.warning("personal VMRs: %s", exc, extra={"integration": integ.name})
                    continue
                if vmrs is not None:
                    ctx.alias_index.publish_personal(
                        integ.name, (directory.policy_room(integ.name, v) for v in vmrs)
                    )
            for name in self._served - served:
                ctx.alias_index.publish_personal(name, ())
            self._served = served
        finally:
            ctx.scheduler.call_later(PERSONAL_REFRESH, self.refresh)
