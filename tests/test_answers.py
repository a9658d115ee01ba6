"""answers.respond: the messages each decision sends, and what happens when they cannot be
rendered (a general_error decline with the same correlation id, never an exception)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from vmrsched import answers, config
from vmrsched.meetings import Action, Decision, Meeting, general_error
from vmrsched.templating import Renderer

START = datetime(2030, 3, 4, 10, tzinfo=UTC)
RECORD = {
    "alias_id": "1d6f1c8e-0000-4000-8000-000000000001",
    "alias": "8100001",
    "numeric_alias": "8100001",
}


@pytest.fixture
def integ(tmp_path: Path) -> config.IntegrationConfig:
    doc = {
        "server": {"data_dir": str(tmp_path)},
        "integrations": [
            {
                "name": "room",
                "exchange": {"mailbox_name": "Video Room", "mailbox_email": "vmr@example.com"},
                "addin": {"token_validation": "none"},
            }
        ],
    }
    return config.parse(doc, tmp_path, {}).integrations[0]


def meeting(body: str = "<p>TOK:-1d6f1c8e-0000-4000-8000-000000000001#</p>") -> Meeting:
    return Meeting(
        uid="uid-1",
        method="REQUEST",
        start=START,
        end=START + timedelta(hours=1),
        organizer_email="olga@example.com",
        organizer_name="Olga",
        subject="Planning",
        html_body=body,
        attendees=("olga@example.com", "vmr@example.com", "bob@example.com"),
        correlation_id="c-1",
    )


def accepted() -> Decision:
    return Decision(
        "accepted",
        "new_single",
        "c-1",
        action=Action("bind", alias_id=RECORD["alias_id"], meeting_uid="uid-1"),
        organizer_update=True,
    )


class Broken(Renderer):
    """A renderer that fails on one template, as a template error at run time would."""

    def __init__(self, base: Renderer, failing: str) -> None:
        self.__dict__.update(base.__dict__)
        self.failing = failing

    def render(self, name: str, variables: Any) -> str:
        if name == self.failing:
            raise RuntimeError(f"{name} cannot be rendered")
        return super().render(name, variables)


def test_an_accepted_placeholder_meeting_sends_the_reply_and_the_organizer_update(
    integ: config.IntegrationConfig,
) -> None:
    decision, messages = answers.respond(
        integ, integ.renderer(), meeting(), accepted(), RECORD, "item-7"
    )
    assert decision == accepted()
    assert [m.kind for m in messages] == ["reply", "update"]
    reply, update = messages
    assert reply.outcome == "accepted" and reply.extra["item_id"] == "item-7"
    assert reply.recipients == ("olga@example.com",)
    assert "8100001" in update.html_body and "TOK:-" not in update.html_body
    assert "vmr@example.com" not in update.recipients and "bob@example.com" in update.recipients


def test_an_answer_that_cannot_be_rendered_becomes_a_general_error_decline(
    integ: config.IntegrationConfig,
) -> None:
    broken = Broken(integ.renderer(), "single_use_joining_instructions_template")
    decision, messages = answers.respond(integ, broken, meeting(), accepted(), RECORD)
    assert (decision.outcome, decision.reason, decision.correlation_id) == (
        "declined",
        "general_error",
        "c-1",
    )
    assert "cannot be rendered" in decision.detail
    assert [(m.kind, m.outcome, m.reason) for m in messages] == [
        ("reply", "declined", "general_error")
    ]
    assert "c-1" in messages[0].html_body  # the organizer can quote it


def test_when_even_the_decline_cannot_be_rendered_the_error_propagates(
    integ: config.IntegrationConfig,
) -> None:
    broken = Broken(integ.renderer(), "reject_general_error_template")
    decision = general_error("c-2", "x")
    with pytest.raises(RuntimeError):
        answers.respond(integ, broken, meeting(), decision, None)
