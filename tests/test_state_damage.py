"""Every file the service keeps besides its stores (queue journals, decisions log, token caches,
sign-in key and sessions) follows the stores' rule (DESIGN "Storage"): damage raises an alarm,
is listed by `vmrsched store check`, is kept aside, and loses nothing readable."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from tests import spoolkit
from tests.configs import spool_config
from vmrsched import config, service
from vmrsched.cli import main as cli
from vmrsched.outgoing import Outgoing
from vmrsched.store.outqueue import OutQueue
from vmrsched.store.repair import read_or_set_aside
from vmrsched.telemetry import STATE_DAMAGED, Alarms, Metrics


def reply(message_id: str) -> Outgoing:
    return Outgoing(
        id=message_id,
        kind="notice",
        sender="vmr@example.com",
        sender_name="Video Room",
        recipients=("alice@example.com",),
        subject=f"Joining instructions {message_id}",
        html_body="<p>Booked</p>",
        outcome="accepted",
        reason="new_meeting",
        correlation_id=f"c-{message_id}",
        meeting_uid=f"uid-{message_id}",
    )


def damage_checksum(journal: Path, needle: bytes) -> None:
    lines = journal.read_bytes().split(b"\n")
    [index] = [i for i, line in enumerate(lines) if needle in line]
    lines[index] = bytes([lines[index][0] ^ 0x01]) + lines[index][1:]
    journal.write_bytes(b"\n".join(lines))


def test_a_damaged_queue_journal_raises_the_alarm_and_its_reply_still_goes_out(
    tmp_path: Path,
) -> None:
    cfg = spool_config(tmp_path)
    queue_dir = cfg.data_dir / "queue" / "alpha"
    queue = OutQueue(queue_dir)
    queue.add([reply("before"), reply("pending"), reply("after")])
    queue.close()
    [journal] = queue_dir.glob("outgoing.*.log")
    damage_checksum(journal, b'"id":"pending"')

    svc = service.start(cfg)
    try:
        spool = cfg.integrations[0].spool_dir(cfg.data_dir)
        spoolkit.wait_for(lambda: len(spoolkit.outbox(spool)) == 3)
        alarms = {(a.integration, a.name): a.message for a in svc.ctx.alarms.active()}
        [aside] = queue_dir.glob("outgoing.*.log.damaged-*")
        assert str(aside) in alarms[("alpha", STATE_DAMAGED)]
    finally:
        svc.stop()
    subjects = sorted(m.headers["Subject"] for m in spoolkit.outbox(spool))
    assert subjects == [f"Joining instructions {i}" for i in ("after", "before", "pending")]


def test_the_alarm_clears_once_the_damaged_files_kept_aside_are_deleted(tmp_path: Path) -> None:
    """docs/guarantees.md: once a file kept aside has been looked at, delete it. The alarm
    names what is left, then clears (its series to 0) once nothing is: an alert must not go on
    firing about files that are gone, nor wait for a restart."""
    cfg = spool_config(tmp_path)
    queue_dir = cfg.data_dir / "queue" / "alpha"
    queue = OutQueue(queue_dir)
    queue.add([reply("one"), reply("two")])
    queue.close()
    [journal] = queue_dir.glob("outgoing.*.log")
    damage_checksum(journal, b'"id":"one"')
    svc = service.start(cfg, damage_recheck_interval=0.05)
    try:
        spoolkit.wait_for(lambda: damage_alarm(svc, "alpha") is not None)
        [aside] = queue_dir.glob("*.damaged-*")
        assert str(aside) in (damage_alarm(svc, "alpha") or "")
        aside.unlink()
        spoolkit.wait_for(lambda: damage_alarm(svc, "alpha") is None)
        scraped = generate_latest(svc.ctx.metrics.registry).decode()
        assert 'vmrsched_alarm_active{alarm="state_damaged",integration="alpha"} 0.0' in scraped
    finally:
        svc.stop()


def damage_alarm(svc: service.Service, integration: str) -> str | None:
    found = [a.message for a in svc.ctx.alarms.active(integration) if a.name == STATE_DAMAGED]
    return found[0] if found else None


def test_a_deleted_damaged_file_leaves_the_alarm_naming_the_others() -> None:
    alarms = Alarms(Metrics(CollectorRegistry()))
    with tempfile.TemporaryDirectory() as tmp:
        first, second = Path(tmp) / "a.damaged-1", Path(tmp) / "b.damaged-2"
        first.write_text("x")
        second.write_text("y")
        alarms.damaged("alpha", first, "checksum")
        alarms.damaged("alpha", second, "checksum")
        [raised] = alarms.active("alpha")
        first.unlink()
        alarms.recheck_damaged()
        [left] = alarms.active("alpha")
        assert str(first) not in left.message and str(second) in left.message
        assert left.raised_at == raised.raised_at
        second.unlink()
        alarms.recheck_damaged()
        assert alarms.active("alpha") == []


def check(data_dir: Path, capsys: pytest.CaptureFixture[str], *name: str) -> tuple[int, str]:
    code = cli.main(["store", "check", *name, "--data-dir", str(data_dir)])
    return code, capsys.readouterr().out


def test_store_check_lists_every_damaged_or_kept_aside_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    queue = OutQueue(data / "queue" / "alpha")
    queue.add([reply("one"), reply("two")])
    queue.close()
    (data / "sign-in").mkdir(parents=True)
    (data / "sign-in" / "key").write_text("garbage\n")
    (data / "sign-in" / "alpha.json").write_text('{"ab": {"email": "olga@example.com"}, "cd": {')
    (data / "oauth").mkdir()
    (data / "oauth" / "alpha.json").write_text('{"AccessToken": {')
    (data / "decisions").mkdir()
    lines = [json.dumps({"subject": f"s{i}"}) for i in range(3)]
    (data / "decisions" / "alpha.jsonl").write_text(f"{lines[0]}\n{{garbage\n{lines[2]}\n")

    [journal] = (data / "queue" / "alpha").glob("outgoing.*.log")
    damage_checksum(journal, b'"id":"two"')
    aside = journal.with_name(journal.name + ".damaged-20261122T120000Z")
    aside.write_bytes(b"kept by an earlier start")

    code, out = check(data, capsys)
    assert code == 1
    for path, says in [
        (journal, "damaged line(s) 2"),
        (aside, "kept aside"),
        (data / "sign-in" / "key", "not a usable key"),
        (data / "sign-in" / "alpha.json", "1 readable"),
        (data / "oauth" / "alpha.json", "does not parse"),
        (data / "decisions" / "alpha.jsonl", "unreadable line(s) 2"),
    ]:
        [line] = [line for line in out.splitlines() if f" {path.relative_to(data)}: " in line]
        assert says in line, line
    assert "damage found" in out


def test_store_check_of_sound_files_says_ok(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = spool_config(tmp_path)
    svc = service.start(cfg)
    try:
        spool = cfg.integrations[0].spool_dir(cfg.data_dir)
        data, _ = spoolkit.request(body="<p>no token</p>")
        spoolkit.wait_handled(spool, spoolkit.drop(spool / "inbox", data))
    finally:
        svc.stop()
    code, out = check(cfg.data_dir, capsys)
    assert code == 0, out
    assert "DAMAGED" not in out and "damage found" not in out
    assert "queue/alpha" in out and "decisions/alpha.jsonl" in out


def test_a_state_file_that_does_not_read_is_set_aside_and_reported(tmp_path: Path) -> None:
    alarms = Alarms(Metrics())
    path = tmp_path / "oauth" / "onprem.json"
    path.parent.mkdir()
    path.write_bytes(b'{"AccessToken": {"a": ')
    loss = "the service account must sign in again"
    assert read_or_set_aside(path, json.loads, "onprem", loss) is None
    [aside] = path.parent.glob("onprem.json.damaged-*")
    assert aside.read_bytes() == b'{"AccessToken": {"a": ' and not path.exists()
    [alarm] = alarms.active("onprem")
    assert alarm.name == STATE_DAMAGED and str(aside) in alarm.message and loss in alarm.message
    path.write_bytes(b"{}")
    assert read_or_set_aside(path, json.loads, "onprem", loss) == b"{}"


def test_a_cut_token_cache_is_set_aside_and_the_service_account_signs_in_again(
    tmp_path: Path,
) -> None:
    from vmrsched.mailbox.ews_auth import DelegatedTokens

    alarms = Alarms(Metrics())
    doc = {
        "server": {"listen": "127.0.0.1:0", "data_dir": str(tmp_path / "data")},
        "integrations": [
            {
                "name": "onprem",
                "backend": "ews",
                "exchange": {
                    "ews_url": "https://mail.example.com/EWS/Exchange.asmx",
                    "authentication": "oauth_delegated",
                    "service_account_username": "svc-vmr@example.com",
                    "oauth_client_id": "client",
                    "oauth_client_secret_env": "SECRET",
                    "oauth_token_endpoint": "https://login.example.com/t/oauth2/v2.0/token",
                    "oauth_authorization_endpoint": "https://login.example.com/t/oauth2/v2.0/a",
                    "oauth_redirect_uri": "http://127.0.0.1:8080/admin/platform/msexchangeconnector/oauth_redirect/",
                    "mailbox_name": "Video Room",
                    "mailbox_email": "vmr@example.com",
                },
                "addin": {"token_validation": "none"},
            }
        ],
    }
    ex = config.parse(doc, tmp_path, {"SECRET": "s"}).integrations[0].exchange
    path = tmp_path / "data" / "oauth" / "onprem.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"RefreshToken": {"x": {"secret": "cut he')
    DelegatedTokens(ex, path)  # today: a ValueError, the integration down, the page a 500
    [aside] = path.parent.glob("onprem.json.damaged-*")
    assert STATE_DAMAGED in {a.name for a in alarms.active("onprem")} and aside.exists()


def test_files_kept_aside_before_a_restart_are_named_again_after_it(tmp_path: Path) -> None:
    """The re-check's case: damage set aside, then the service restarted (an upgrade, say)
    before anyone looked. The start names the kept files again (the alarm must not go with the
    restart while `store check` still lists them), and clears once they are deleted."""
    cfg = spool_config(tmp_path)
    queue_aside = cfg.data_dir / "queue" / "alpha" / "outgoing.1.log.damaged-20261201T000000Z"
    log_aside = cfg.data_dir / "decisions" / "alpha.jsonl.damaged-20261201T000000Z"
    for path in (queue_aside, log_aside):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"kept\n")
    svc = service.start(cfg, damage_recheck_interval=0.05)
    try:
        spoolkit.wait_for(lambda: damage_alarm(svc, "alpha") is not None)
        named = damage_alarm(svc, "alpha") or ""
        assert str(queue_aside) in named and str(log_aside) in named
        queue_aside.unlink()
        log_aside.unlink()
        spoolkit.wait_for(lambda: damage_alarm(svc, "alpha") is None)
    finally:
        svc.stop()
