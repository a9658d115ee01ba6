"""answers.plan: one meeting and the store's view of it to the decision, its store action and
every message it sends; what happens when they cannot be rendered (a general_error decline with
the same correlation id and no store action, never an exception)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from vmrsched import config
from vmrsched.messages import answers
from vmrsched.rules.meetings import AliasRecord, Meeting, MeetingState, recovered
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


FRESH = AliasRecord(RECORD["alias_id"], RECORD["alias"], RECORD["numeric_alias"], "reserved")
NOW = START - timedelta(days=1)


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
    step = answers.plan(
        integ, integ.renderer(), meeting(), MeetingState(fresh=FRESH), NOW, "item-7"
    )
    decision = step.decision
    assert (decision.outcome, decision.reason) == ("accepted", "new_single")
    assert decision.action.kind == "bind_new" and decision.action.alias_id == FRESH.alias_id
    assert step.fields["name"] and step.fields["organizer_email"] == "olga@example.com"
    assert [m.kind for m in step.messages] == ["reply", "update"]
    reply, update = step.messages
    assert reply.outcome == "accepted" and reply.extra["item_id"] == "item-7"
    assert reply.recipients == ("olga@example.com",)
    assert "8100001" in reply.html_body
    assert "8100001" in update.html_body and "TOK:-" not in update.html_body
    assert "vmr@example.com" not in update.recipients and "bob@example.com" in update.recipients
    assert update.extra["alias_id"] == FRESH.alias_id


def test_a_decline_has_no_store_action_and_one_message(integ: config.IntegrationConfig) -> None:
    step = answers.plan(integ, integ.renderer(), meeting("<p>no token</p>"), MeetingState(), NOW)
    assert (step.decision.reason, step.decision.action.kind, dict(step.fields)) == (
        "invalid_alias_id",
        "none",
        {},
    )
    assert [(m.kind, m.outcome) for m in step.messages] == [("reply", "declined")]


def test_recovery_sends_the_organizer_update_only(integ: config.IntegrationConfig) -> None:
    step = answers.plan(
        integ, integ.renderer(), meeting(), MeetingState(fresh=FRESH), NOW, rule=recovered
    )
    assert step.decision.action.kind == "bind_new"
    assert [m.kind for m in step.messages] == ["update"]
    again = answers.plan(
        integ, integ.renderer(), meeting(), MeetingState(fresh=FRESH), NOW, rule=recovered
    )
    assert again.messages[0].id == step.messages[0].id  # stable for the same alias
    other = AliasRecord("2d6f1c8e-0000-4000-8000-000000000002", "8100002", "8100002", "reserved")
    elsewhere = answers.plan(
        integ, integ.renderer(), meeting(), MeetingState(fresh=other), NOW, rule=recovered
    )
    assert elsewhere.messages[0].id != step.messages[0].id  # a new alias is a new message


def test_an_answer_that_cannot_be_rendered_becomes_a_general_error_decline(
    integ: config.IntegrationConfig,
) -> None:
    broken = Broken(integ.renderer(), "single_use_joining_instructions_template")
    step = answers.plan(integ, broken, meeting(), MeetingState(fresh=FRESH), NOW)
    decision = step.decision
    assert (decision.outcome, decision.reason, decision.correlation_id) == (
        "declined",
        "general_error",
        "c-1",
    )
    assert decision.action.kind == "none" and not step.fields  # nothing is stored
    assert "cannot be rendered" in decision.detail
    assert [(m.kind, m.outcome, m.reason) for m in step.messages] == [
        ("reply", "declined", "general_error")
    ]
    assert "c-1" in step.messages[0].html_body  # the organizer can quote it


def test_when_even_the_decline_cannot_be_rendered_the_error_propagates(
    integ: config.IntegrationConfig,
) -> None:
    broken = Broken(integ.renderer(), "reject_general_error_template")
    with pytest.raises(RuntimeError):
        answers.plan(integ, broken, meeting(), MeetingState(), NOW)  # no alias drawn


def test_a_refusal_of_someone_elses_change_sends_nothing(integ: config.IntegrationConfig) -> None:
    rec = AliasRecord(
        RECORD["alias_id"],
        RECORD["alias"],
        RECORD["numeric_alias"],
        "bound",
        meeting_uid="uid-1",
        organizer="olga@example.com",
    )
    cancel = replace(meeting(), method="CANCEL", sequence=1, organizer_email="eve@evil.example")
    step = answers.plan(integ, integ.renderer(), cancel, MeetingState(rec, rec), NOW)
    assert (step.decision.reason, step.decision.action.kind) == ("not_organizer", "none")
    assert step.messages == () and dict(step.fields) == {}
    assert step.alias == RECORD["alias"]  # logged with the alias it was about


def test_nothing_goes_to_an_organizer_that_is_not_one_address(
    integ: config.IntegrationConfig,
) -> None:
    """The poller sets such a request aside; should one get here all the same, no reply or
    update goes to a list of addresses."""
    listed = replace(meeting(), organizer_email="a@example.com,mailto:b@example.com")
    step = answers.plan(integ, integ.renderer(), listed, MeetingState(fresh=FRESH), NOW)
    assert step.decision.reason == "new_single" and step.messages == ()
    record = {**RECORD, "organizer_email": "a@example.com, b@example.com", "subject": "x"}
    assert answers.admin_notice(integ, integ.renderer(), record, "resent", NOW, "1") is None


def exchange_rewrites(instructions: str) -> str:
    """What Exchange and Outlook make of HTML they store (Word's editor): classes dropped, each
    paragraph a MsoNormal with its text in styled spans, spaces as &nbsp; here and there, links
    with spans inside, Office's empty o:p, line breaks inside tags; a whole document around."""
    body = instructions.replace('<div class="vmr-joining">', "<div>")
    body = body.replace("<p>", '<p class=MsoNormal><span style="font-family:Calibri">')
    body = body.replace('<p style="color:#888888;font-size:8pt">', "<p class=MsoNormal><span>")
    body = body.replace("</p>", "<o:p></o:p></span></p>\r\n")
    body = body.replace("<strong>", "<b>").replace("</strong>", "</b>")
    body = body.replace("From a phone: dial", "From a phone:&nbsp;dial")
    body = body.replace("<a href=", "<a\r\nhref=").replace('">', '"><span style="color:blue">', 3)
    return (
        "<html><head><style>p.MsoNormal{margin:0}</style></head><body lang=EN-GB>"
        "<div class=WordSection1><p class=MsoNormal>Agenda: numbers<o:p></o:p></p>"
        f"{body}<p class=MsoNormal>See you there<o:p></o:p></p></div></body></html>"
    )


def test_recovery_removes_the_dead_instructions_whatever_exchange_made_of_their_markup(
    integ: config.IntegrationConfig,
) -> None:
    dead = {
        "alias_id": "9d6f1c8e-0000-4000-8000-000000000009",
        "alias": "vmr424242@video.example.com",
        "numeric_alias": "vmr424242",
    }
    renderer = integ.renderer()
    old = renderer.render(
        "single_use_joining_instructions_template", answers.variables(integ, None, dead)
    )
    body = exchange_rewrites(old)
    step = answers.plan(
        integ, renderer, meeting(body), MeetingState(fresh=FRESH), NOW, rule=recovered
    )
    [update] = step.messages
    new = update.html_body
    for value in (dead["alias"], dead["numeric_alias"], dead["alias_id"], "424242"):
        assert value not in new
    assert new.count("Join the video meeting") == 1 and RECORD["alias_id"] in new
    assert new.index("Agenda: numbers") < new.index(RECORD["alias"]) < new.index("See you there")
    assert new.endswith("</div></body></html>")  # the document stays whole


def test_the_conference_fields_render_the_alias_and_keep_the_subject_only_as_the_template_says(
    tmp_path: Path,
) -> None:
    """The conference's name, description and subject may name the alias and its numeric alias;
    a conference subject template that leaves the subject out (privacy) keeps it out of the
    store: the raw subject is stored nowhere else."""
    doc = {
        "server": {"data_dir": str(tmp_path)},
        "integrations": [
            {
                "name": "room",
                "exchange": {"mailbox_name": "Video Room", "mailbox_email": "vmr@example.com"},
                "addin": {"token_validation": "none"},
                "single_use": {
                    "conference_name_template": "Room {{alias}}",
                    "conference_description_template": "Dial {{numeric_alias}}",
                    "conference_subject_template": "Meeting in {{numeric_alias}}",
                },
            }
        ],
    }
    integ = config.parse(doc, tmp_path, {}).integrations[0]
    secret = replace(meeting(), subject="Secret merger talks")
    step = answers.plan(integ, integ.renderer(), secret, MeetingState(fresh=FRESH), NOW)
    assert step.decision.action.kind == "bind_new"
    assert step.fields["name"] == "Room 8100001"
    assert step.fields["description"] == "Dial 8100001"
    assert step.fields["conference_subject"] == "Meeting in 8100001"
    assert "Secret" not in repr(dict(step.fields))
    assert answers.shown_subject(integ, integ.renderer(), secret, step.decision) == (
        "Meeting in 8100001"
    )


@pytest.mark.parametrize(
    ("server", "page"),
    [
        pytest.param(
            {"public_url": "http://127.0.0.1:47300/"},
            "http://127.0.0.1:47300/my/room",
            id="the loopback trial's plain http",
        ),
        pytest.param(
            {"public_url": "https://vmr.example.com/video"},
            "https://vmr.example.com/video/my/room",
            id="https under a path",
        ),
        pytest.param({}, "https://fqdn.example.com/my/room", id="no public_url: server_fqdn"),
    ],
)
def test_a_declines_self_service_url_is_where_the_page_answers(
    tmp_path: Path, server: dict[str, str], page: str
) -> None:
    """Audit L3: {{self_service_url}} is built as the sign-in's redirect URI is, from
    [server] public_url when set (https://<server_fqdn> otherwise), so the link opens the page."""
    doc = {
        "server": {"data_dir": str(tmp_path), **server},
        "integrations": [
            {
                "name": "room",
                "exchange": {"mailbox_name": "Video Room", "mailbox_email": "vmr@example.com"},
                "addin": {"token_validation": "exchange", "server_fqdn": "fqdn.example.com"},
                "metadata": {"exchange_metadata_urls": ["https://mail.example.com/"]},
                "email": {"reject_invalid_alias_id_text": '<a href="{{self_service_url}}">x</a>'},
            }
        ],
    }
    integ = config.parse(doc, tmp_path, {}).integrations[0]
    assert answers.self_service_url(integ) == page
    step = answers.plan(integ, integ.renderer(), meeting("<p>no token</p>"), MeetingState(), NOW)
    [decline] = step.messages
    assert f'href="{page}"' in decline.html_body
