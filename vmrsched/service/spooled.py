"""Meeting requests made by hand (`vmrsched invite`, the demo pane) put into an integration's
spool, and what the spool sent back about them. The spool's folders are the spool gateway's
business (mailbox/spool.py); the front ends ask here."""

from __future__ import annotations

import uuid
from pathlib import Path

from vmrsched.config import IntegrationConfig
from vmrsched.mailbox import spool
from vmrsched.messages import invites

__all__ = ["drop_invite", "spool_replies"]


def drop_invite(
    integ: IntegrationConfig, data_dir: Path, options: invites.InviteOptions
) -> tuple[Path, str]:
    """Build the request and deliver it into the spool's inbox as the spool contract asks;
    (where it lies, its UID). ValueError for options that make no request."""
    data, uid = invites.build(integ, options)
    name = f"invite-{uuid.uuid4().hex[:12]}.ics"
    return spool.deliver(integ.spool_dir(data_dir), name, data), uid


def spool_replies(integ: IntegrationConfig, data_dir: Path, uid: str) -> list[dict[str, str]]:
    """The mails the spool sent about meeting `uid`, oldest first."""
    return spool.read_outbox(integ.spool_dir(data_dir), uid)
