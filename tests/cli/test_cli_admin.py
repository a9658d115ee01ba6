"""`vmrsched aliases` and `vmrsched decisions` as an admin runs them: real processes for the
service and for every command. While the service runs the commands go through its admin API;
once it is stopped they work on the data directory, and what they queued (an organizer's
notice) goes out when the service starts again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests import spoolkit
from tests.configs import spool_toml
from tests.serving import ROOT, command, free_port, start, wait_ready
from vmrsched import config
from vmrsched.cli import admin as cli_admin
from vmrsched.errors import ServiceError
from vmrsched.service import OfflineAdmin

TOKEN = "cli-admin-token-0123456789abcdef012345"


def write(tmp_path: Path, port: int, token: bool = True) -> Path:
    path = tmp_path / "vmrsched.toml"
    path.write_text(
        spool_toml(
            tmp_path / "data",
            port=port,
            server='admin_token_env = "VMRSCHED_ADMIN_TOKEN"' if token else "",
            integration="[integrations.spool]\npoll_interval_seconds = 0.05\n",
        )
    )
    return path


def cli(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return command(cfg, *args, env={"VMRSCHED_ADMIN_TOKEN": TOKEN})


def book(port: int, spool: Path, subject: str, days: int) -> tuple[str, str]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/addin/v1/default/single-use-vmrs",
        data=b"{}",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        vmr = json.loads(response.read())
    start_at = datetime.now(UTC).replace(microsecond=0, second=0, minute=0) + timedelta(days=days)
    data, uid = spoolkit.request(
        body=vmr["joining_instructions"], start=start_at, minutes=60, subject=subject
    )
    spoolkit.drop(spool / "inbox", data)
    spoolkit.wait_for(lambda: bool(spoolkit.answers_for(spool, uid)))
    return vmr["alias"], start_at.isoformat()


def subjects(spool: Path) -> list[str]:
    return [m.headers["Subject"] for m in spoolkit.outbox(spool)]


@pytest.mark.slow
def offline_booking(
    data: Path, decision: dict[str, Any], uid: str, fields: dict[str, Any]
) -> dict[str, Any]:
    """The integration "default" under `data` as an older release left it, written with the
    service stopped: one line of its decisions log, and meeting `uid` bound tomorrow with
    `fields`. Returns the bound record."""
    log = data / "decisions" / "default.jsonl"
    log.parent.mkdir(parents=True)
    log.write_text(json.dumps(decision) + "\n")
    return bound_tomorrow(config.store_dir(data, "default"), uid, fields)


def bound_tomorrow(store_dir: Path, uid: str, fields: dict[str, Any]) -> dict[str, Any]:
    """Meeting `uid` bound tomorrow for an hour in the file store at `store_dir` (the service
    stopped), with `fields`: the bound record."""
    from vmrsched.rules.meetings import Action
    from vmrsched.rules.recurrence import Schedule
    from vmrsched.store import Store

    store = Store(store_dir)
    record = store.reserve("vmr", 6, "video.example.com")
    start_at = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
    bound = store.apply(
        Action(
            "bind",
            alias_id=record["alias_id"],
            meeting_uid=uid,
            schedule=Schedule(start_at, start_at + timedelta(hours=1)),
        ),
        fields,
    )
    store.commit()
    store.close()
    return dict(bound or record)


def test_aliases_and_decisions_through_the_api_then_offline(tmp_path: Path) -> None:
    port = free_port()
    cfg = write(tmp_path, port)
    spool = tmp_path / "data" / "spool" / "default"
    server = start(cfg, {"VMRSCHED_ADMIN_TOKEN": TOKEN})
    try:
        wait_ready(port)
        budget, budget_start = book(port, spool, "Budget review", 2)
        retro, _ = book(port, spool, "Sprint retro", 3)

        listed = cli(cfg, "aliases", "list")
        assert listed.returncode == 0, listed.stderr
        assert "through the admin API at http://127.0.0.1:" in listed.stderr
        assert budget in listed.stdout and retro in listed.stdout
        assert "Budget review" in listed.stdout and budget_start in listed.stdout
        day = cli(cfg, "aliases", "list", "--day", budget_start[:10], "--json")
        assert [a["alias"] for a in json.loads(day.stdout)] == [budget]

        shown = cli(cfg, "aliases", "show", budget)
        assert shown.returncode == 0, shown.stderr
        assert "status:           bound" in shown.stdout
        assert "organizer_email:  olga@example.com" in shown.stdout
        assert f"window:           {budget_start}" in shown.stdout
        assert "decision:" in shown.stdout and "accepted (new_single)" in shown.stdout

        found = cli(cfg, "decisions", "-q", "budget")
        assert "accepted (new_single) " + budget in found.stdout
        assert "1 decision(s) in default" in found.stderr

        resent = cli(cfg, "aliases", "resend", budget)
        assert resent.returncode == 0 and "queued as" in resent.stdout, resent.stderr
        spoolkit.wait_for(lambda: "Joining details: Budget review" in subjects(spool))

        unsure = cli(cfg, "aliases", "delete", budget)
        assert unsure.returncode == 1 and "add --yes" in unsure.stderr
        deleted = cli(cfg, "aliases", "delete", budget, "--yes")
        assert deleted.returncode == 0 and f"{budget} deleted (through" in deleted.stdout
        spoolkit.wait_for(lambda: "Video room removed: Budget review" in subjects(spool))
        unknown = cli(cfg, "aliases", "show", "nobody@video.example.com")
        assert unknown.returncode == 1 and "(unknown_alias)" in unknown.stderr
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)

    # stopped: the same commands on the data directory
    listed = cli(cfg, "aliases", "list", "-q", "budget")
    assert listed.returncode == 0 and "offline, on " in listed.stderr, listed.stderr
    assert "deleted" in listed.stdout
    assert "deleted by" in cli(cfg, "aliases", "show", budget).stdout
    deleted = cli(cfg, "aliases", "delete", retro, "--yes")
    assert deleted.returncode == 0 and "(offline, on " in deleted.stdout, deleted.stderr
    assert "deleted by " in cli(cfg, "aliases", "show", retro).stdout
    assert "vmrsched CLI" in cli(cfg, "aliases", "show", retro).stdout
    assert "Sprint retro" in cli(cfg, "decisions").stdout
    assert "Video room removed: Sprint retro" not in subjects(spool)

    # started again: the notice queued offline goes out, the alias is refused from then on
    server = start(cfg, {"VMRSCHED_ADMIN_TOKEN": TOKEN})
    try:
        wait_ready(port)
        spoolkit.wait_for(lambda: "Video room removed: Sprint retro" in subjects(spool))
        assert "deleted" in cli(cfg, "aliases", "show", retro).stdout
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def test_a_running_service_without_an_admin_token_is_named(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, free_port(), token=False), environ={})
    refused = pytest.raises(ServiceError, match=r"set \[server\] admin_token_env")
    # the OfflineAdmin stands for the running service: it holds the data directory
    with OfflineAdmin(cfg), refused, cli_admin.admin_for(cfg, None):
        pass
    with cli_admin.admin_for(cfg, None) as (_, how):  # released: offline
        assert how.startswith("offline")


def test_an_unreachable_service_is_a_clear_error(tmp_path: Path) -> None:
    path = write(tmp_path, free_port())
    cfg = config.load(path, environ={"VMRSCHED_ADMIN_TOKEN": TOKEN})
    with cli_admin.admin_for(cfg, f"http://127.0.0.1:{free_port()}") as (admin, how):
        assert how.startswith("through the admin API")
        with pytest.raises(ServiceError, match="cannot be reached"):
            admin.find_aliases("default")


def test_several_integrations_need_one_named(tmp_path: Path) -> None:
    path = write(tmp_path, free_port())
    path.write_text(
        path.read_text() + '\n[[integrations]]\nname = "other"\n[integrations.exchange]\n'
        'mailbox_name = "Other"\nmailbox_email = "other@example.com"\n'
        '[integrations.single_use]\nalias_prefix = "oth"\n'
        '[integrations.addin]\ntoken_validation = "none"\n'
    )
    out = cli(path, "decisions")
    assert out.returncode == 1 and "name the integration with --integration" in out.stderr
    out = cli(path, "decisions", "--integration", "nope")
    assert out.returncode == 1 and "no integration named 'nope'" in out.stderr
    out = cli(path, "decisions", "--integration", "other")
    assert out.returncode == 0 and "0 decision(s) in other (offline" in out.stderr


def test_the_cli_shows_and_searches_the_conference_subject_of_records_and_logs_from_before(
    tmp_path: Path,
) -> None:
    """Offline, on a data directory an older version wrote (its decisions log and its store
    hold raw subjects): `decisions` and `aliases list` show the conference subject, rendered
    with the template where nothing rendered was kept, and a search finds only what is shown."""

    cfg = tmp_path / "vmrsched.toml"
    cfg.write_text(
        spool_toml(
            tmp_path / "data",
            integration='[integrations.single_use]\nconference_subject_template = "Private"\n',
        )
    )
    record = offline_booking(
        tmp_path / "data",
        {
            "time": "2026-01-01T09:00:00+00:00",
            "subject": "Secret merger talks",
            "organizer": "ann@example.com",
            "outcome": "declined",
            "reason": "invalid_alias_id",
            "correlation_id": "c-legacy",
        },
        "uid-legacy",
        {
            "name": "Legacy",
            "conference_subject": "Legacy conference subject",
            "subject": "Secret merger talks",
            "organizer_email": "ann@example.com",
        },
    )

    shown = cli(cfg, "decisions")
    assert shown.returncode == 0, shown.stderr
    assert "'Private' from ann@example.com" in shown.stdout and "Secret" not in shown.stdout
    assert "1 decision(s)" in shown.stderr
    assert "0 decision(s)" in cli(cfg, "decisions", "-q", "merger").stderr
    assert "1 decision(s)" in cli(cfg, "decisions", "-q", "private").stderr

    listed = cli(cfg, "aliases", "list")
    assert listed.returncode == 0, listed.stderr
    assert "Legacy conference subject" in listed.stdout and "Secret" not in listed.stdout
    assert "0 alias(es)" in cli(cfg, "aliases", "list", "-q", "merger").stderr
    shown_json = json.loads(cli(cfg, "aliases", "show", record["alias"], "--json").stdout)
    assert shown_json["subject"] == "Legacy conference subject"


def test_commands_that_use_no_secret_do_not_ask_for_one(tmp_path: Path) -> None:
    """invite, failed and manifest read no secret: the variables the config names need not be
    set in the shell that runs them (the service's own environment has them)."""
    path = write(tmp_path, free_port())
    env = {k: v for k, v in os.environ.items() if k != "VMRSCHED_ADMIN_TOKEN"}

    def bare(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "vmrsched", *args, "--config", str(path)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
            env=env,
        )

    invited = bare("invite", "--integration", "default", "--subject", "No secrets")
    assert invited.returncode == 0, invited.stderr
    assert bare("failed").returncode == 0
    assert bare("manifest", "default").returncode == 0
    refused = bare("aliases", "list")  # the admin API's token is a secret it does use
    assert refused.returncode == 1 and "VMRSCHED_ADMIN_TOKEN" in refused.stderr


def test_an_alias_may_follow_the_options(tmp_path: Path) -> None:
    alias = "vmr000001@video.example.com"
    path = write(tmp_path, free_port())
    out = subprocess.run(
        [*(sys.executable, "-m", "vmrsched", "aliases", "show"), "--config", str(path), alias],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env={**os.environ, "VMRSCHED_ADMIN_TOKEN": TOKEN},
    )
    assert "unrecognized arguments" not in out.stderr
    assert alias in out.stdout + out.stderr


def test_an_offline_delete_of_a_deleted_alias_changes_nothing(tmp_path: Path) -> None:
    """On the data directory of a stopped service too: the second delete is refused as an
    unknown alias that was deleted already, and queues no second notice."""
    from vmrsched.errors import NotFound
    from vmrsched.store.outqueue import read_contents

    cfg = config.load(write(tmp_path, free_port(), token=False), environ={})
    record = bound_tomorrow(
        config.store_dir(cfg.data_dir, "default"),
        "uid-twice",
        {"name": "Twice", "organizer_email": "ann@example.com"},
    )
    with OfflineAdmin(cfg) as admin:
        first = admin.delete_alias("default", record["alias"], "test")
        assert first["status"] == "deleted"
        with pytest.raises(NotFound, match="deleted already") as refused:
            admin.delete_alias("default", record["alias"], "test")
        assert refused.value.code == "unknown_alias"
        assert admin.find_aliases("default", record["alias"])[0]["deleted"] == first["deleted"]
    queued, _ = read_contents(config.queue_dir(cfg.data_dir, "default"))
    assert [m.message.outcome for m in queued] == ["deleted"]


def test_the_terminal_never_gets_a_subjects_bidi_or_zero_width_characters(
    tmp_path: Path,
) -> None:
    """A subject is the attacker's text: `aliases list`, `aliases show` and `decisions` print
    every character that would reorder or hide text on the admin's terminal as its escape
    (one helper for all of them), the rest as it is."""
    from vmrsched.cli.common import terminal

    hidden = "Plan \u202egnitteem\u202c zero\u200bwidth \u2066x\u2069 \x1b[2J ok\\"
    escaped = "Plan \\u202egnitteem\\u202c zero\\u200bwidth \\u2066x\\u2069 \\x1b[2J ok\\\\"
    assert terminal(hidden) == escaped and terminal("Réunion 会議") == "Réunion 会議"
    cfg = tmp_path / "vmrsched.toml"
    cfg.write_text(spool_toml(tmp_path / "data"))
    record = offline_booking(
        tmp_path / "data",
        {
            "time": "2026-01-01T09:00:00+00:00",
            "conference_subject": hidden,
            "organizer": "ann@example.com",
            "outcome": "declined",
            "reason": "invalid_alias_id",
            "correlation_id": "c-1",
            "detail": hidden,
        },
        "uid-hidden",
        {"name": "Hidden", "conference_subject": hidden, "organizer_email": "ann@example.com"},
    )
    for args in (("aliases", "list"), ("aliases", "show", record["alias"]), ("decisions",)):
        out = cli(cfg, *args)
        assert out.returncode == 0, out.stderr
        assert escaped in out.stdout, args
        assert not any(c in out.stdout for c in "\u202e\u202c\u200b\u2066\u2069\x1b"), args


def test_a_token_the_running_service_refuses_is_named_as_refused(tmp_path: Path) -> None:
    """The admin's token does not match the running service's (rotated in one place only): the
    command says the service refused it and where this token came from, not how to log in with
    a browser."""
    port = free_port()
    cfg = write(tmp_path, port)
    server = start(cfg, {"VMRSCHED_ADMIN_TOKEN": TOKEN})
    try:
        wait_ready(port)
        refused = command(
            cfg, "aliases", "list", env={"VMRSCHED_ADMIN_TOKEN": "another-token-" + "x" * 24}
        )
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    assert refused.returncode == 1
    assert "refused the admin token" in refused.stderr, refused.stderr
    assert "VMRSCHED_ADMIN_TOKEN" in refused.stderr and "/admin/login" not in refused.stderr
