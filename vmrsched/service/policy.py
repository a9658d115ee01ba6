"""Pexip's external policy: what a Conferencing Node is told for a dialled alias, read from the
published alias index only (never an actor: a node waits on the answer to connect a call), and
what the admin pages say about the answers (PolicyActivity: counts, and why the recent
rejections were rejected)."""

from __future__ import annotations

from typing import Any

from vmrsched.pexip import policy
from vmrsched.service.runtime import Runtime


class PolicyAnswers:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def policy_answer(self, local_alias: str) -> tuple[str, dict[str, Any]]:
        """What a Pexip node gets for a dialled alias: (result label, JSON answer). Reads the
        published alias index only; never waits on an actor."""
        runtime = self.runtime
        result, answer = policy.answer(local_alias, runtime.ctx.clock(), runtime.ctx.alias_index)
        runtime.policy_activity.answered(result)
        if result == "rejected":
            runtime.policy_activity.rejected(local_alias, self._reject_reason(local_alias))
        return result, answer

    def _reject_reason(self, local_alias: str) -> str:
        """Why the policy endpoint rejected an alias, in words for the admin pages."""
        room = self.runtime.ctx.alias_index.lookup(policy.normalise(local_alias))
        if room is None:
            return "not one of ours"
        if room.status != "bound" or room.schedule is None:
            return f"not booked for a meeting (it is {room.status or 'unknown'})"
        return "outside its join window (too early or too late to join)"
