"""vmrs.toml, the directory of the `file` source, as admins write it: check-config names every
fault of the file at once, each under its key path in the file; `serve` refuses to start on
such a file the way it refuses any other config problem (every problem printed, exit 1, never a
service left half-started); and a file that turns faulty while the service runs leaves the last
good directory in use, with one warning naming the problems, until it is fixed (a config reload
in between included)."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import spoolkit
from tests.serving import free_port
from vmrsched import config, service
from vmrsched.directory import DirectoryUnavailable, FileDirectory
from vmrsched.errors import Unavailable
from vmrsched.signin.identity import Identity

ROOT = Path(__file__).resolve().parent.parent

CONFIG = """\
[server]
listen = "127.0.0.1:{port}"
data_dir = "data"

[[integrations]]
name = "alpha"
enable_single_use_vmrs = false
enable_personal_vmrs = true
[integrations.addin]
token_validation = "none"
"""

# one of every fault an admin makes, in one file
FAULTY = """\
surprise = 1

[[users]]
email = "alice@contoso.test"

[[users.vmrs]]
name = "Typo"
aliases = ["typo@video.contoso.test"]
allow_guest = true

[[users.vmrs]]
name = "No alias"

[[users.vmrs]]
name = "Empty aliases"
aliases = []

[[users.vmrs]]
name = "One string"
aliases = "one@video.contoso.test"

[[users.vmrs]]
name = "Not strings"
aliases = ["ok@video.contoso.test", 7100, ""]

[[users]]
[[users.vmrs]]
name = "Nobody's"
aliases = ["nobody@video.contoso.test"]

[[users]]
email = "alice@contoso.test, bob@contoso.test"

[[users]]
email = "Alice@Contoso.test"

[[users.vmrs]]
name = "Webinar"
aliases = ["webinar@video.contoso.test"]
service_type = "webinar"
pin = 1234
guest_pin = "12ab"
allow_guests = "yes"
"""

EXPECTED = [
    "vmrs.toml: surprise: unknown key",
    "vmrs.toml: users[0].vmrs[0].allow_guest: unknown key (did you mean 'allow_guests'?)",
    "vmrs.toml: users[0].vmrs[1].aliases: missing: a room needs at least one alias",
    "vmrs.toml: users[0].vmrs[2].aliases: must hold at least one alias",
    "vmrs.toml: users[0].vmrs[3].aliases: must be a list of strings, got a string",
    "vmrs.toml: users[0].vmrs[4].aliases[1]: must be a string, got an integer",
    "vmrs.toml: users[0].vmrs[4].aliases[2]: must not be empty",
    "vmrs.toml: users[1].email: missing: every user is named by their email address",
    "vmrs.toml: users[2].email: must be one email address (name@domain), "
    "got 'alice@contoso.test, bob@contoso.test'",
    "vmrs.toml: users[3].email: 'Alice@Contoso.test' is users[0]'s email too "
    "(emails are compared ignoring case)",
    "vmrs.toml: users[3].vmrs[0].service_type: must be one of conference, lecture, "
    "two_stage_dialing, got 'webinar'",
    'vmrs.toml: users[3].vmrs[0].pin: must be a string (in quotes: pin = "1234"), got an integer',
    "vmrs.toml: users[3].vmrs[0].guest_pin: must be 4-20 digits (a final # allowed)",
    "vmrs.toml: users[3].vmrs[0].allow_guests: must be true or false, got a string",
]


WHO = Identity("anonymous", kind="none")  # the pane's caller with token_validation "none"


@contextlib.contextmanager
def serving(path: Path) -> Iterator[service.Service]:
    """The service on the config at `path`, its integration "alpha" running; stopped after."""
    svc = service.start(config.load(path))
    try:
        spoolkit.wait_for(lambda: svc.ctx.status.state("alpha") == "running")
        yield svc
    finally:
        svc.stop()


def write(folder: Path, directory: str | None) -> Path:
    """A config in `folder` whose integration reads vmrs.toml beside it (`directory`; None:
    no such file)."""
    path = folder / "vmrsched.toml"
    path.write_text(CONFIG.format(port=free_port()))
    if directory is not None:
        (folder / "vmrs.toml").write_text(directory)
    return path


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmrsched", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def problems_of(path: Path) -> list[str]:
    with pytest.raises(config.ConfigError) as info:
        config.load(path)
    return info.value.problems


def test_check_config_names_every_fault_of_the_directory_file_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, FAULTY)
    out = run("check-config", str(path))
    assert out.returncode == 1, out.stdout
    reported = [line.strip() for line in out.stderr.splitlines()]
    for line in EXPECTED:
        assert line in reported, (line, out.stderr)
    assert sum(line.startswith("vmrs.toml: ") for line in reported) == len(EXPECTED)


def test_the_shipped_directory_file_is_valid(tmp_path: Path) -> None:
    shutil.copy(ROOT / "config" / "vmrs.toml", tmp_path / "vmrs.toml")
    assert config.load(write(tmp_path, None)).integrations[0].enable_personal_vmrs


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            'users = "alice@contoso.test"\n',
            "vmrs.toml: users: must be [[users]] tables, got a string",
        ),
        ('[users]\nemail = "alice@contoso.test"\n', "vmrs.toml: users: must be [[users]] tables"),
        ('users = ["alice@contoso.test"]\n', "vmrs.toml: users[0]: must be a table, got a string"),
        (
            '[[users]]\nemail = "alice@contoso.test"\nvmrs = "room"\n',
            "vmrs.toml: users[0].vmrs: must be [[users.vmrs]] tables, got a string",
        ),
        (
            '[[users]]\nemail = "alice@contoso.test"\nvmrs = ["room"]\n',
            "vmrs.toml: users[0].vmrs[0]: must be a table, got a string",
        ),
        (
            '[[users]\nemail = "alice@contoso.test"\n',
            "vmrs.toml: not valid TOML: Expected ']]' at the end of an array declaration "
            "(at line 1, column 8)",
        ),
        (b"email = '\xff'\n", "vmrs.toml: not UTF-8"),
    ],
)
def test_a_file_of_the_wrong_shape_is_named_not_crashed_on(
    tmp_path: Path, text: str | bytes, problem: str
) -> None:
    path = write(tmp_path, "")
    if isinstance(text, bytes):
        (tmp_path / "vmrs.toml").write_bytes(text)
    else:
        (tmp_path / "vmrs.toml").write_text(text)
    assert any(p.startswith(problem) for p in problems_of(path)), problems_of(path)


def test_two_integrations_on_one_faulty_file_hear_of_it_once(tmp_path: Path) -> None:
    path = write(tmp_path, '[[users]]\nemail = "alice"\n')
    text = path.read_text()
    second = text[text.index("[[integrations]]") :].replace('"alpha"', '"beta"')
    path.write_text(text + "\n" + second)
    assert problems_of(path) == [
        "vmrs.toml: users[0].email: must be one email address (name@domain), got 'alice'"
    ]


def test_rooms_with_one_alias_twice_are_refused(tmp_path: Path) -> None:
    """The policy index serves a dialled alias's room: an alias of two rooms would be either."""
    path = write(
        tmp_path,
        '[[users]]\nemail = "a@contoso.test"\n[[users.vmrs]]\naliases = ["meet@v.test"]\n'
        '[[users]]\nemail = "b@contoso.test"\n[[users.vmrs]]\n'
        'aliases = ["x@v.test", "MEET@v.test"]\n',
    )
    assert problems_of(path) == [
        "vmrs.toml: users[1].vmrs[0].aliases[1]: 'MEET@v.test' is an alias of "
        "users[0].vmrs[0] too (aliases are dialled ignoring case)"
    ]


def test_serve_refuses_to_start_on_a_faulty_directory_file(tmp_path: Path) -> None:
    path = write(tmp_path, FAULTY)
    started = time.monotonic()
    out = run("serve", "--config", str(path), timeout=30)
    assert out.returncode == 1, out.stderr
    assert time.monotonic() - started < 30
    for line in EXPECTED:
        assert line in out.stderr, line
    assert not (tmp_path / "data").exists()  # nothing was started


@pytest.mark.parametrize(
    "shape",
    ['users = "alice@contoso.test"\n', 'users = ["alice@contoso.test"]\n', "[[users]\n"],
)
def test_serve_refuses_a_wrongly_shaped_file_and_does_not_hang(tmp_path: Path, shape: str) -> None:
    out = run("serve", "--config", str(write(tmp_path, shape)), timeout=30)
    assert out.returncode == 1 and "vmrs.toml: " in out.stderr, out.stderr


GOOD = (
    '[[users]]\nemail = "alice@contoso.test"\n[[users.vmrs]]\nname = "A"\naliases = ["a@v.test"]\n'
)
FIXED = (
    '[[users]]\nemail = "alice@contoso.test"\n[[users.vmrs]]\nname = "B"\naliases = ["b@v.test"]\n'
)


def test_a_faulty_change_keeps_the_last_good_directory_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "vmrs.toml"
    path.write_text(GOOD)
    directory = FileDirectory(path, allow_new_users=False, integration="hq")
    assert [v.name for v in directory.vmrs_of("alice@contoso.test")] == ["A"]
    assert [v.name for v in directory.rooms() or []] == ["A"]

    caplog.set_level(logging.INFO, logger="vmrsched")
    path.write_text('users = "alice@contoso.test"\n')
    for _ in range(3):  # requests and the policy index's refresh, again and again
        assert [v.name for v in directory.vmrs_of("Alice@contoso.test")] == ["A"]
        assert directory.peek("alice@contoso.test") is not None
        assert directory.rooms() is None  # nothing new for the policy index
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    said = warnings[0].getMessage()
    assert str(path) in said and "users: must be [[users]] tables, got a string" in said
    assert "last good" in said
    assert getattr(warnings[0], "integration", "") == "hq"  # several may share one file

    caplog.clear()
    path.write_text(FIXED)
    assert [v.name for v in directory.vmrs_of("alice@contoso.test")] == ["B"]
    assert [v.name for v in directory.rooms() or []] == ["B"]
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert "in use again" in caplog.records[0].getMessage()


def test_a_file_never_good_is_unavailable_and_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "vmrs.toml"
    path.write_text('[[users]]\nemail = "alice@contoso.test"\nvmrs = "room"\n')
    directory = FileDirectory(path, allow_new_users=True)
    caplog.set_level(logging.INFO, logger="vmrsched")
    assert directory.rooms() is None  # the policy index has nothing to serve, and no error
    for _ in range(2):
        assert directory.peek("alice@contoso.test") is None
        with pytest.raises(DirectoryUnavailable, match=r"users\[0\]\.vmrs: must be"):
            directory.vmrs_of("alice@contoso.test")
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    path.unlink()
    with pytest.raises(DirectoryUnavailable, match="cannot read"):
        directory.vmrs_of("alice@contoso.test")
    path.write_text(GOOD)
    assert [v.name for v in directory.vmrs_of("alice@contoso.test")] == ["A"]


def test_a_file_that_goes_away_keeps_the_last_good_directory(tmp_path: Path) -> None:
    path = tmp_path / "vmrs.toml"
    path.write_text(GOOD)
    directory = FileDirectory(path, allow_new_users=False)
    assert directory.vmrs_of("alice@contoso.test")
    path.unlink()
    assert [v.name for v in directory.vmrs_of("alice@contoso.test")] == ["A"]


BAD = 'users = "alice@contoso.test"\n'


def names(vmrs: list[Any] | None) -> list[str]:
    return [v.name for v in vmrs or []]


def test_a_directory_built_anew_for_the_same_file_starts_from_its_last_good_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A config reload builds each integration's directory anew; the last good directory is
    the process's, per file: a mistake saved before the new one first reads the file leaves the
    last good one in use, with the warning it has without a reload. Another file starts from
    nothing of this one's."""
    path = tmp_path / "vmrs.toml"
    path.write_text(GOOD)
    before = FileDirectory(path, allow_new_users=False, integration="hq")
    assert names(before.vmrs_of("alice@contoso.test")) == ["A"]

    unchanged = FileDirectory(path, allow_new_users=False, integration="hq")
    assert names(unchanged.peek("alice@contoso.test")) == ["A"]  # at hand: the file unchanged
    assert names(unchanged.rooms()) == ["A"]  # and for the policy index

    caplog.set_level(logging.INFO, logger="vmrsched")
    path.write_text(BAD)
    # the same file, however the config names it
    (tmp_path / "sub").mkdir()
    after = FileDirectory(tmp_path / "sub" / ".." / "vmrs.toml", False, integration="hq")
    for _ in range(2):
        assert names(after.vmrs_of("alice@contoso.test")) == ["A"]
        assert after.peek("alice@contoso.test") is not None
    assert names(after.rooms()) == ["A"]  # the new directory's first answer to the index
    assert after.rooms() is None
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "changed and cannot be used; the last good one stays in use" in warning, warning

    other = tmp_path / "other.toml"  # a reload that names another file
    other.write_text(BAD)
    with pytest.raises(DirectoryUnavailable, match=r"other\.toml cannot be used: "):
        FileDirectory(other, allow_new_users=False).vmrs_of("alice@contoso.test")

    caplog.clear()
    path.write_text(FIXED)
    assert names(after.vmrs_of("alice@contoso.test")) == ["B"]
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert names(FileDirectory(path, False).vmrs_of("alice@contoso.test")) == ["B"]
    assert names(before.vmrs_of("alice@contoso.test")) == ["B"]


async def test_a_mistake_saved_just_after_a_reload_keeps_the_last_good_rooms(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The audit's case: a reload restarts the integration (its config changed) and vmrs.toml is
    saved with a mistake before the new config's directory read it. The pane still gets the
    last good rooms, not 503 directory_unavailable."""
    path = write(tmp_path, GOOD)
    with serving(path) as svc:
        served = await svc.personal_vmrs(svc.integration("alpha"), WHO, "alice@contoso.test")
        assert [v["name"] for v in served] == ["A"]

        changed = 'name = "alpha"\ndescription = "changed"\n'
        path.write_text(path.read_text().replace('name = "alpha"\n', changed))
        result = await svc.reload_async()
        assert result is not None and result.changed == ["alpha"]
        caplog.set_level(logging.INFO, logger="vmrsched")
        (tmp_path / "vmrs.toml").write_text(BAD)
        try:
            after = await svc.personal_vmrs(svc.integration("alpha"), WHO, "alice@contoso.test")
        except Unavailable as exc:
            pytest.fail(f"503 {exc.code}: the last good directory was not kept over the reload")
        assert after == served
        said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("changed and cannot be used; the last good one stays" in s for s in said), said


BOTH = """\
[server]
listen = "127.0.0.1:{port}"
data_dir = "data"

[[integrations]]
name = "alpha"
enable_personal_vmrs = true
[integrations.exchange]
mailbox_name = "Room"
mailbox_email = "room@contoso.test"
[integrations.single_use]
alias_prefix = "{prefix}"
alias_domain = "v.test"
[integrations.spool]
poll_interval_seconds = 0.05
[integrations.addin]
token_validation = "none"
"""


def room_with(alias: str) -> str:
    return (
        '[[users]]\nemail = "alice@contoso.test"\n[[users.vmrs]]\nname = "C"\n'
        f'aliases = ["{alias}"]\n'
    )


async def test_a_running_change_with_an_alias_a_single_use_room_can_get_is_not_taken(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """What check-config refuses at the next start is refused when the running service reads
    the changed file, and the last good directory stays: an alias inside a single-use range
    of the running config, or one a booking still holds (handed out under a prefix since
    changed). Taken, it would be served twice now, and the next start would refuse the whole
    config."""
    port = free_port()
    path = tmp_path / "vmrsched.toml"
    path.write_text(BOTH.format(port=port, prefix="81"))
    (tmp_path / "vmrs.toml").write_text(GOOD)
    with serving(path) as svc:
        integ = svc.integration("alpha")
        served = await svc.personal_vmrs(integ, WHO, "alice@contoso.test")
        assert [v["name"] for v in served] == ["A"]
        caplog.set_level(logging.WARNING, logger="vmrsched")

        (tmp_path / "vmrs.toml").write_text(room_with("81123456@v.test"))
        assert await svc.personal_vmrs(integ, WHO, "alice@contoso.test") == served
        said = " ".join(r.getMessage() for r in caplog.records)
        assert "the last good one stays in use" in said
        assert "alias '81123456@v.test' lies in the single-use range of integration 'alpha'" in said

        held = await svc.reserve("alpha", 10.0)  # an alias under prefix 81 ...
        path.write_text(BOTH.format(port=port, prefix="82"))  # ... which alpha no longer has
        result = await svc.reload_async()
        assert result is not None and result.changed == ["alpha"]
        spoolkit.wait_for(lambda: svc.ctx.status.state("alpha") == "running")
        spoolkit.wait_for(lambda: svc.ctx.alias_index.owner(held["numeric_alias"]) == "alpha")
        caplog.clear()
        (tmp_path / "vmrs.toml").write_text(room_with(held["numeric_alias"]))
        integ = svc.integration("alpha")
        assert await svc.personal_vmrs(integ, WHO, "alice@contoso.test") == served
        said = " ".join(r.getMessage() for r in caplog.records)
        assert f"alias '{held['numeric_alias']}' is a single-use alias of integration 'alpha'" in (
            said
        )

        (tmp_path / "vmrs.toml").write_text(FIXED)  # outside every range, held by nobody
        fixed = await svc.personal_vmrs(integ, WHO, "alice@contoso.test")
        assert [v["name"] for v in fixed] == ["B"]


async def test_an_alias_a_booking_holds_is_never_offered_as_a_personal_room(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """At a start the directory may be read before the integrations' aliases are loaded into
    the policy index, so its check could not see a booking holding one of its aliases (handed
    out under a prefix since changed). The policy endpoint answers such an alias for the
    booking; the pane never offers it as the user's room: the room without it, or not at
    all, and the log says so once."""
    from datetime import timedelta

    from vmrsched.pexip.policy import Room, RoomSettings

    port = free_port()
    path = tmp_path / "vmrsched.toml"
    path.write_text(BOTH.format(port=port, prefix="82"))
    (tmp_path / "vmrs.toml").write_text(
        '[[users]]\nemail = "alice@contoso.test"\n'
        '[[users.vmrs]]\nname = "Both"\naliases = ["81999999", "alice@v.test"]\n'
        '[[users.vmrs]]\nname = "Only"\naliases = ["81999998@v.test"]\n'
    )
    with serving(path) as svc:
        integ = svc.integration("alpha")
        before = await svc.personal_vmrs(integ, WHO, "alice@contoso.test")
        assert [(v["name"], v["aliases"]) for v in before] == [
            ("Both", ["81999999", "alice@v.test"]),
            ("Only", ["81999998@v.test"]),
        ]
        settings = RoomSettings("alpha", timedelta(minutes=30), timedelta(minutes=60))
        svc.ctx.alias_index.publish(  # what alpha's store publishes once it is loaded
            [
                Room(f"id-{n}", f"8199999{n}@v.test", f"8199999{n}", "bound", settings)
                for n in (8, 9)
            ]
        )
        caplog.set_level(logging.WARNING, logger="vmrsched")
        for _ in range(2):
            after = await svc.personal_vmrs(integ, WHO, "alice@contoso.test")
            assert [(v["name"], v["aliases"]) for v in after] == [("Both", ["alice@v.test"])]
        said = [r.getMessage() for r in caplog.records if "is not offered" in r.getMessage()]
        assert len(said) == 2  # once per alias
        assert "alias '81999999': a single-use alias of integration 'alpha'" in said[0]
