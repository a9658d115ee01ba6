"""Any instance answers Pexip about any alias: two services on one PostgreSQL, the integration
run by one of them; a meeting booked there is answered by the policy endpoint of the other
within a second, and its cancellation too."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests import spoolkit
from tests.configs import Running, pxps
from vmrsched import config, service


def make(tmp: Path, instance: str, dsn: str) -> config.Config:
    doc: dict[str, Any] = {
        "server": {"data_dir": str(tmp / instance)},
        "storage": {
            "backend": "postgresql",
            "dsn_env": "DSN",
            "lease_seconds": 2,
            "instance": instance,
        },
        "integrations": [
            {
                "name": "alpha",
                "exchange": {"mailbox_name": "Video Room", "mailbox_email": "vmr@example.com"},
                "addin": {"token_validation": "none", "server_fqdn": "vc.example.com"},
                "spool": {"poll_interval_seconds": 0.05, "directory": str(tmp / "spool")},
            }
        ],
    }
    return config.parse(doc, tmp, {"DSN": dsn})


def answer(svc: service.Service, alias: str) -> str:
    """continue with the room's settings ("served"), reject, or continue without a result
    (not one of ours: the node decides)."""
    body = svc.policy_answer(alias)[1]
    if body.get("action") == "continue":
        return "served" if body.get("result") else "unknown"
    return str(body.get("action", ""))


def test_the_other_instance_answers_pexip_within_a_second(tmp_path: Path, dsn: str) -> None:
    one_cfg = make(tmp_path, "one", dsn)
    one = service.start(one_cfg)
    try:
        spoolkit.wait_for(lambda: one.ctx.status.state("alpha") == "running")
        two = service.start(make(tmp_path, "two", dsn))
        try:
            spoolkit.wait_for(lambda: two.ctx.status.state("alpha") == "elsewhere")
            running = Running(one, one_cfg)
            record = running.reserve()
            now = datetime.now(UTC)  # joinable now
            data, uid = spoolkit.request(body=pxps(record), start=now)
            running.send(data)
            alias = record["alias"]
            assert answer(one, alias) == "served"
            booked = time.monotonic()
            spoolkit.wait_for(lambda: answer(two, alias) == "served", timeout=5)
            assert time.monotonic() - booked < 1.0
            cancel, _ = spoolkit.request(
                uid, body=pxps(record), start=now, method="CANCEL", sequence=1
            )
            running.send(cancel)
            assert answer(one, alias) == "reject"
            spoolkit.wait_for(lambda: answer(two, alias) == "reject", timeout=5)
        finally:
            two.stop()
    finally:
        one.stop()
