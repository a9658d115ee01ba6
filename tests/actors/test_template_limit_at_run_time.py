"""A template within its limits on check-config's sample values can go over them on a real
meeting's (a subject thirty times longer): that meeting is declined with general_error, and the
admin is told which template and which limit in the decision's log line and in the decisions
log, not by a traceback cut short (a traceback's detail there now keeps its end: the error)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from tests import spoolkit
from tests.configs import Running, pxps, spool_config
from vmrsched import service
from vmrsched.store import decisions as store_decisions

# builds 31 × 30,000 characters on the sample subject (under the million a render may build);
# a 1,000-character subject builds 30 million
GROWING = "{% set s = subject * 30000 %}<p>Booked ({{ s|length }}).</p>"


def test_a_real_subject_that_takes_a_template_over_its_limit_is_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = spool_config(tmp_path, email={"accept_new_single_meeting_template": GROWING})
    svc = service.start(cfg)
    try:
        running = Running(svc, cfg)
        short, short_uid = spoolkit.request(body=pxps(running.reserve()), subject="Weekly sync")
        running.send(short)
        assert [m.outcome for m in running.answers(short_uid)] == ["accepted"]

        caplog.set_level(logging.WARNING, logger="vmrsched")
        long, uid = spoolkit.request(body=pxps(running.reserve()), subject="Planning " * 110)
        running.send(long)
        [decline] = running.answers(uid)
        assert (decline.outcome, decline.reason) == ("declined", "general_error")
        [line] = [r.getMessage() for r in caplog.records if "(general_error)" in r.getMessage()]
        assert "(TemplateLimitError: accept_new_single_meeting_template: " in line
        assert "Traceback" not in line
        decisions = cfg.data_dir / "decisions" / "alpha.jsonl"
        logged = [e for e in store_decisions.read(decisions) if uid in json.dumps(e)]
        detail = json.dumps(logged)
        assert "TemplateLimitError: accept_new_single_meeting_template: " in detail
    finally:
        svc.stop()
