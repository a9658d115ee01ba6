"""The command line as a newcomer meets it: a version, help for every option, both ways of
running it, and a clear refusal of a port that cannot exist."""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from vmrsched.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=60
    )


def test_version_both_ways() -> None:
    for module in ("vmrsched", "vmrsched.cli"):
        out = run("-m", module, "--version")
        assert out.returncode == 0 and out.stdout.startswith("vmrsched "), out.stderr


def test_every_subcommand_and_option_has_help() -> None:
    parser = build_parser()
    [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    helps = {c.dest: c.help for c in commands._choices_actions}
    for name, sub in commands.choices.items():
        assert helps.get(name), name
        for action in sub._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help, (name, action.option_strings or action.dest)


def test_an_impossible_port_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(
        '[server]\nlisten = "127.0.0.1:99999"\n[[integrations]]\nname = "x"\n'
        '[integrations.exchange]\nmailbox_name = "R"\nmailbox_email = "r@example.com"\n'
    )
    out = run("-m", "vmrsched", "check-config", str(config))
    assert out.returncode == 1
    assert "server.listen: port 99999 is outside 0-65535" in out.stderr
    served = run("-m", "vmrsched", "serve", "--config", str(config))
    assert served.returncode == 1 and "port 99999" in served.stderr


def test_invite_keeps_the_offset_it_was_given(tmp_path: Path) -> None:
    from vmrsched import config
    from vmrsched.mailbox import itip
    from vmrsched.messages import invites

    cfg = config.load(ROOT / "config" / "vmrsched.toml", environ={})
    parser = build_parser()
    args = parser.parse_args(
        ["invite", "--integration", "default", "--start", "2026-12-01T10:00+01:00"]
    )
    data, _ = invites.build(cfg.integrations[0], invites.InviteOptions.from_args(args))
    [meeting] = itip.parse_calendar(data).meetings
    assert meeting.start.astimezone(UTC) == datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def test_a_data_directory_that_cannot_be_used_is_one_line_everywhere(tmp_path: Path) -> None:
    """check-config says so with the key path; serve says so in one line, no traceback."""
    (tmp_path / "file").write_text("")
    config = tmp_path / "vmrsched.toml"
    shutil.copy(ROOT / "config" / "vmrs.toml", tmp_path / "vmrs.toml")
    text = (ROOT / "config" / "vmrsched.toml").read_text()
    config.write_text(text.replace('data_dir = "../data"', f'data_dir = "{tmp_path}/file/data"'))
    checked = run("-m", "vmrsched", "check-config", str(config))
    assert checked.returncode == 1
    assert f"server.data_dir: {tmp_path}/file/data cannot be made" in checked.stderr
    served = run("-m", "vmrsched", "serve", "--config", str(config))
    assert served.returncode == 1 and "Traceback" not in served.stderr
    assert f"cannot keep state in {tmp_path}/file/data: Not a directory" in served.stderr


def test_check_config_online_takes_an_organizer_and_a_mailbox_out_of_scope() -> None:
    args = build_parser().parse_args(
        ["check-config", "--online", "--organizer", "a@example.com", "--outside", "b@example.com"]
    )
    assert (args.organizer, args.outside) == ("a@example.com", "b@example.com")


def test_check_config_warns_that_a_node_cannot_reach_loopback() -> None:
    out = run("-m", "vmrsched", "check-config", str(ROOT / "config" / "vmrsched.toml"))
    assert out.returncode == 0
    assert "http://127.0.0.1:8080 names this machine only: a Conferencing Node cannot reach it" in (
        out.stderr
    )


def test_a_port_in_use_leaves_nothing_behind(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "vmrsched.toml"
        shutil.copy(ROOT / "config" / "vmrs.toml", tmp_path / "vmrs.toml")
        text = (ROOT / "config" / "vmrsched.toml").read_text()
        text = text.replace('data_dir = "../data"', f'data_dir = "{tmp_path}/data"')
        config.write_text(text.replace('listen = "127.0.0.1:8080"', f'listen = "127.0.0.1:{port}"'))
        served = run("-m", "vmrsched", "serve", "--config", str(config))
    assert served.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in served.stderr
    assert not (tmp_path / "data").exists()


def test_store_repair_refuses_while_a_service_holds_the_data_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """docs/guarantees.md: `store repair` refuses while the service runs. A running service
    holds the data directory's lock for its life, also while one integration's store, refused
    as damaged, is let go of (its own lock free)."""
    from vmrsched.cli import main as cli
    from vmrsched.store import Store
    from vmrsched.store.files import lock_directory

    data_dir = tmp_path / "data"
    (data_dir / "store").mkdir(parents=True)
    Store(data_dir / "store" / "alpha").close()
    held = lock_directory(data_dir)  # as `vmrsched serve` holds it
    try:
        assert cli.main(["store", "repair", "--data-dir", str(data_dir)]) == 1
        assert "stop the service first" in capsys.readouterr().err
    finally:
        os.close(held)
    assert cli.main(["store", "repair", "--data-dir", str(data_dir)]) == 0


def test_bad_input_to_the_offline_commands_is_said_plainly(tmp_path: Path) -> None:
    """A typo must not read as "all is well": an unknown integration or a data directory that
    is not there is an error, a meeting of minus five minutes or a manifest for ftp:// too."""
    config_file = str(ROOT / "config" / "vmrsched.toml")
    unknown = run("-m", "vmrsched", "failed", "--integration", "nosuch", "--config", config_file)
    assert unknown.returncode == 1 and "no integration 'nosuch'" in unknown.stderr
    nowhere = run("-m", "vmrsched", "failed", "--data-dir", str(tmp_path / "nowhere"))
    assert nowhere.returncode == 1 and "no data directory" in nowhere.stderr
    negative = run("-m", "vmrsched", "invite", "--duration", "-5", "--config", config_file)
    assert negative.returncode == 2 and "at least a minute" in negative.stderr
    ftp = run(
        "-m", "vmrsched", "manifest", "default", "--base-url", "ftp://x", "--config", config_file
    )
    assert ftp.returncode == 2 and "no http(s) URL" in ftp.stderr and not ftp.stdout


def test_invite_refuses_an_organizer_that_is_not_one_address(tmp_path: Path) -> None:
    """`Doe, John <john@example.com>` is one address with a comma in its name; `a, b` is two:
    refused with the reason and exit status 1, and nothing is dropped in the spool."""
    config = tmp_path / "vmrsched.toml"
    shutil.copy(ROOT / "config" / "vmrs.toml", tmp_path / "vmrs.toml")
    text = (ROOT / "config" / "vmrsched.toml").read_text()
    config.write_text(text.replace('data_dir = "../data"', f'data_dir = "{tmp_path}/data"'))
    out = run(
        "-m", "vmrsched", "invite", "--integration", "default", "--config", str(config),
        "--organizer", "a@example.com, b@example.com",
    )  # fmt: skip
    assert out.returncode == 1 and "--organizer: not one address" in out.stderr
    assert not out.stdout and not list(tmp_path.glob("data/spool/*/inbox/*"))
    named = run(
        "-m", "vmrsched", "invite", "--integration", "default", "--config", str(config),
        "--organizer", "Doe, John <john@example.com>",
    )  # fmt: skip
    assert named.returncode == 0, named.stderr
    [dropped] = tmp_path.glob("data/spool/default/inbox/*.ics")
    assert b'ORGANIZER;CN="Doe, John":mailto:john@example.com' in dropped.read_bytes()
