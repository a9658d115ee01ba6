"""Config reload: only changed integrations restart, added ones start, removed ones stop, and an
invalid file keeps the old config running with every problem logged and an alarm raised."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests import spoolkit
from vmrsched import config, service
from vmrsched.logs import redact


def integration(name: str, mailbox: str, description: str = "") -> str:
    return f"""
[[integrations]]
name = "{name}"
description = "{description}"
[integrations.exchange]
mailbox_name = "Room {name}"
mailbox_email = "{mailbox}"
[integrations.addin]
token_validation = "none"
[integrations.spool]
poll_interval_seconds = 0.05
[integrations.single_use]
alias_prefix = "{name}"
"""


def write(path: Path, *integrations: str) -> None:
    data_dir = path.parent / "data"
    path.write_text(
        f'[server]\nlisten = "127.0.0.1:0"\ndata_dir = "{data_dir}"\n' + "".join(integrations)
    )


def running(svc: service.Service, name: str) -> bool:
    return svc.ctx.status.snapshot().get(name, {}).get("state") == "running"


def test_reload_changed_added_removed_and_invalid(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "vmrsched.toml"
    write(path, integration("alpha", "a@example.com"), integration("beta", "b@example.com"))
    svc = service.start(config.load(path))
    try:
        spoolkit.wait_for(lambda: running(svc, "alpha") and running(svc, "beta"))
        alpha_before = svc.ctx.registry.get("alpha", "allocator")
        beta_before = svc.ctx.registry.get("beta", "allocator")

        # beta changes, alpha does not, gamma is added
        write(
            path,
            integration("alpha", "a@example.com"),
            integration("beta", "b@example.com", description="changed"),
            integration("gamma", "c@example.com"),
        )
        result = svc.reload()
        assert result is not None
        assert (result.changed, result.added, result.removed) == (["beta"], ["gamma"], [])
        spoolkit.wait_for(lambda: running(svc, "beta") and running(svc, "gamma"))
        assert svc.ctx.registry.get("alpha", "allocator") is alpha_before
        assert svc.ctx.registry.get("beta", "allocator") is not beta_before

        # gamma answers requests at once
        gamma = tmp_path / "data" / "spool" / "gamma"
        data, uid = spoolkit.request(body="no token")
        spoolkit.drop(gamma / "inbox", data)
        spoolkit.wait_for(lambda: bool(spoolkit.answers_for(gamma, uid)))

        # alpha is removed
        write(
            path,
            integration("beta", "b@example.com", description="changed"),
            integration("gamma", "c@example.com"),
        )
        result = svc.reload()
        assert result is not None and result.removed == ["alpha"]
        assert "alpha" not in svc.ctx.status.snapshot()
        assert svc.integration_names() == ["beta", "gamma"]

        # an invalid file changes nothing, logs every problem and raises an alarm
        path.write_text(
            '[server]\nlisten = "127.0.0.1:0"\n[[integrations]]\nname = "BAD"\n'
            '[integrations.single_use]\nalias_prefix = "ABCDEFGHIJ"\n'
        )
        with caplog.at_level(logging.ERROR):
            assert svc.reload() is None
        logged = caplog.text
        assert (
            "integrations[0].name" in logged and "integrations[0].single_use.alias_prefix" in logged
        )
        assert ("service", "config_invalid") in {
            (a.integration, a.name) for a in svc.ctx.alarms.active()
        }
        assert svc.integration_names() == ["beta", "gamma"] and running(svc, "gamma")
        registry = svc.ctx.metrics.registry
        assert (
            registry.get_sample_value("vmrsched_config_reloads_total", {"result": "invalid"}) == 1.0
        )
        assert (
            registry.get_sample_value("vmrsched_config_reloads_total", {"result": "applied"}) == 2.0
        )

        # fixing the file clears the alarm
        write(
            path,
            integration("beta", "b@example.com", description="changed"),
            integration("gamma", "c@example.com"),
        )
        result = svc.reload()
        assert result is not None and not (result.changed or result.added or result.removed)
        assert not svc.ctx.alarms.active("service")
    finally:
        svc.stop()


def test_a_removed_integration_takes_its_alarms_with_it(tmp_path: Path) -> None:
    """An alarm of an integration a reload removed is neither shown nor exported (its alert
    would fire for ever for something that is not there); the others' stay."""
    path = tmp_path / "vmrsched.toml"
    write(path, integration("alpha", "a@example.com"), integration("beta", "b@example.com"))
    svc = service.start(config.load(path))
    try:
        spoolkit.wait_for(lambda: running(svc, "alpha") and running(svc, "beta"))
        svc.ctx.alarms.raise_("alpha", "delivery_failed", "a reply failed for good")
        svc.ctx.alarms.raise_("alpha", "pexip_unreachable", "no answer")
        svc.ctx.alarms.clear("alpha", "pexip_unreachable")  # a series at 0 goes too
        svc.ctx.alarms.raise_("beta", "delivery_failed", "a reply failed for good")
        registry = svc.ctx.metrics.registry

        def exported(name: str, alarm: str) -> float | None:
            return registry.get_sample_value(
                "vmrsched_alarm_active", {"integration": name, "alarm": alarm}
            )

        assert exported("alpha", "delivery_failed") == 1.0
        assert exported("alpha", "pexip_unreachable") == 0.0

        write(path, integration("beta", "b@example.com"))
        result = svc.reload()
        assert result is not None and result.removed == ["alpha"]
        assert svc.ctx.alarms.active("alpha") == []
        assert exported("alpha", "delivery_failed") is None
        assert exported("alpha", "pexip_unreachable") is None
        assert exported("beta", "delivery_failed") == 1.0
        assert [a.name for a in svc.ctx.alarms.active("beta")] == ["delivery_failed"]
    finally:
        svc.stop()


def test_server_keys_a_reload_cannot_apply_wait_for_a_restart_and_are_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A rotated admin token (or policy password, or the trusted proxies) applies at once; keys
    read when the service starts (listen, max_body_bytes, …) keep their running value until a
    restart, and the reload names them, in the log and in its result (the admin API's answer),
    instead of one sentence that was wrong for the keys that did apply."""
    path = tmp_path / "vmrsched.toml"
    token = tmp_path / "admin.token"
    token.write_text("first-admin-token-0123456789abcdef\n")

    def server(listen: str, body: int) -> str:
        return (
            f'[server]\nlisten = "{listen}"\ndata_dir = "{tmp_path / "data"}"\n'
            f'admin_token_file = "admin.token"\nmax_body_bytes = {body}\n'
        )

    path.write_text(server("127.0.0.1:0", 65536) + integration("alpha", "a@example.com"))
    svc = service.start(config.load(path))
    try:
        spoolkit.wait_for(lambda: running(svc, "alpha"))
        alpha = svc.ctx.registry.get("alpha", "allocator")
        token.write_text("second-admin-token-0123456789abcdef\n")
        path.write_text(server("127.0.0.1:1", 2048) + integration("alpha", "a@example.com"))
        with caplog.at_level(logging.INFO):
            result = svc.reload()
        assert result is not None
        assert result.restart_needed == ["server.listen", "server.max_body_bytes"]
        assert (result.changed, result.added, result.removed) == ([], [], [])
        running_server = svc.config.server
        assert running_server.admin_token is not None
        assert running_server.admin_token.reveal() == "second-admin-token-0123456789abcdef"
        assert (running_server.listen, running_server.max_body_bytes) == ("127.0.0.1:0", 65536)
        assert svc.ctx.registry.get("alpha", "allocator") is alpha  # nothing restarted
        logged = caplog.text
        assert "server.admin_token: applied" in logged
        assert (
            "server.listen, server.max_body_bytes: take effect after a restart (the running "
            "values stay until then)" in logged
        )
        assert "changes take effect after a restart" not in logged
    finally:
        svc.stop()


def test_a_refused_reload_says_the_running_config_stays_in_words_the_redaction_keeps(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "vmrsched.toml"
    write(path, integration("alpha", "a@example.com"))
    svc = service.start(config.load(path))
    try:
        spoolkit.wait_for(lambda: running(svc, "alpha"))
        text = path.read_text().replace(
            "[integrations.spool]",
            '[integrations.pexip]\nmanagement_password = "hunter2-inline"\n[integrations.spool]',
        )
        path.write_text(text)
        with caplog.at_level(logging.ERROR):
            assert svc.reload() is None
        (line,) = [r.getMessage() for r in caplog.records if "reload refused" in r.getMessage()]
        assert line.startswith("config reload refused, the running config stays: ")
        assert "integrations[0].pexip.management_password — " in line
        assert redact(line) == line  # nothing in it is taken for a credential and blanked
        assert "hunter2-inline" not in caplog.text
    finally:
        svc.stop()
