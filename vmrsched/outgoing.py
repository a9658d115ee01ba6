"""The messages the service sends (replies and organizer updates), as the durable queue keeps them
and every backend delivers them."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal

# reply: the room's accept/decline; update: the organizer's meeting with the real joining
# instructions (sent as the organizer); notice: a plain mail from the room to the organizer
# (the joining instructions when their meeting could not be updated)
OutgoingKind = Literal["reply", "update", "notice"]


def message_id(*parts: str) -> str:
    """A message's id from what makes it that message (the integration, the meeting and its
    sequence, the kind, the outcome…): the same parts give the same id after a crash, so a resend
    replaces the earlier copy where the backend allows, and the queue holds it once. Ids already
    queued stay valid: the parts are joined as every version has joined them."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Outgoing:
    """A message the notifier must deliver: a reply to an organizer or an organizer update.
    `id` is stable for the same meeting, sequence and outcome, so a resend after a crash
    replaces rather than duplicates where the backend allows it."""

    id: str
    kind: OutgoingKind
    sender: str
    sender_name: str
    recipients: tuple[str, ...]
    subject: str
    html_body: str
    outcome: str
    reason: str
    correlation_id: str
    meeting_uid: str
    calendar: str = ""  # text/calendar part (METHOD:REPLY or METHOD:REQUEST), may be empty
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "sender": self.sender,
            "sender_name": self.sender_name,
            "recipients": list(self.recipients),
            "subject": self.subject,
            "html_body": self.html_body,
            "outcome": self.outcome,
            "reason": self.reason,
            "correlation_id": self.correlation_id,
            "meeting_uid": self.meeting_uid,
            "calendar": self.calendar,
            "extra": self.extra,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Outgoing:
        return cls(
            id=raw["id"],
            kind=raw["kind"],
            sender=raw["sender"],
            sender_name=raw.get("sender_name", ""),
            recipients=tuple(raw["recipients"]),
            subject=raw["subject"],
            html_body=raw["html_body"],
            outcome=raw["outcome"],
            reason=raw["reason"],
            correlation_id=raw["correlation_id"],
            meeting_uid=raw["meeting_uid"],
            calendar=raw.get("calendar", ""),
            extra=raw.get("extra", {}),
        )
