"""Where personal VMRs come from: the TOML directory file, and the Pexip management API (the fake
Management Node over HTTP): user found, created, not allowed, no VMRs, a VMR without alias
dropped, an outage; and the template variables of one VMR. (A faulty directory file:
test_directory_file.py; a Management Node too slow or refusing a user: test_directory_pexip.py.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.pexip_server import FakePexip
from tests.fakes.threaded import ThreadedServer
from vmrsched.config import PexipConfig
from vmrsched.directory import (
    DirectoryUnavailable,
    FileDirectory,
    PersonalVmr,
    PexipDirectory,
    UserUnknown,
    template_values,
)
from vmrsched.pexip.management import ManagementClient

ROOT = Path(__file__).resolve().parent.parent


def test_the_shipped_directory_file_serves_its_demo_users() -> None:
    directory = FileDirectory(ROOT / "config" / "vmrs.toml", allow_new_users=False)
    olga = directory.vmrs_of("Olga@Example.com")
    assert [v.name for v in olga] == ["Olga's room", "Team stand-up"]
    assert olga[0].pin == "1234" and olga[0].allow_guests
    assert directory.vmrs_of("new.starter@example.com") == []
    with pytest.raises(UserUnknown):
        directory.vmrs_of("stranger@example.com")
    assert FileDirectory(ROOT / "config" / "vmrs.toml", True).vmrs_of("stranger@example.com") == []


def test_a_changed_file_is_read_again(tmp_path: Path) -> None:
    """(A faulty change, and what it leaves in use: tests/test_directory_file.py.)"""
    path = tmp_path / "vmrs.toml"
    path.write_text('[[users]]\nemail = "a@example.com"\n')
    directory = FileDirectory(path, allow_new_users=False)
    assert directory.vmrs_of("a@example.com") == []
    path.write_text(
        '[[users]]\nemail = "a@example.com"\n[[users.vmrs]]\nname = "Room"\naliases = ["r@x"]\n'
    )
    assert [v.aliases for v in directory.vmrs_of("a@example.com")] == [("r@x",)]
    assert directory.vmrs_of("a@example.com")[0].owner_email == "a@example.com"


def test_template_values_split_the_aliases() -> None:
    vmr = PersonalVmr("Room", ("meet@video.example.com", "8110", "meet"), pin="1", guest_pin="2")
    values = template_values(vmr, "join.example.com")
    assert values["domain_aliases"] == ["meet@video.example.com"]
    assert values["numeric_aliases"] == ["8110"] and values["other_aliases"] == ["meet"]
    assert values["addin_server_domain"] == "join.example.com" and values["guest_pin"] == "2"


@pytest.fixture
def pexip() -> Iterator[tuple[FakePexip, ManagementClient]]:
    fake = FakePexip(password="pw")
    server = ThreadedServer(fake.app()).start()
    settings = PexipConfig(management_url=server.url, management_username="admin")
    client = ManagementClient(settings, "pw")
    yield fake, client
    client.close()
    server.stop()


def test_pexip_directory_finds_creates_or_refuses_users(
    pexip: tuple[FakePexip, ManagementClient],
) -> None:
    fake, client = pexip
    fake.add_end_user("Olga@Example.com")
    fake.add_conference(
        "Olga's room",
        ["meet.olga@video.example.com", "81100001"],
        primary_owner_email_address="olga@example.com",
        pin="1234",
    )
    fake.add_conference("Empty", [], primary_owner_email_address="olga@example.com")
    fake.add_conference(
        "Someone else's", ["x@video.example.com"], primary_owner_email_address="bob@example.com"
    )
    found = PexipDirectory(client, allow_new_users=False).vmrs_of("olga@example.com")
    assert [(v.name, v.aliases, v.pin) for v in found] == [
        ("Olga's room", ("meet.olga@video.example.com", "81100001"), "1234")
    ]  # the one without alias is dropped; another owner's is not listed
    with pytest.raises(UserUnknown):
        PexipDirectory(client, allow_new_users=False).vmrs_of("new@example.com")
    assert PexipDirectory(client, allow_new_users=True).vmrs_of("new@example.com") == []
    assert any(u["primary_email_address"] == "new@example.com" for u in fake.end_users.values())


def test_pexip_directory_outage_is_unavailable_and_answers_are_cached(
    pexip: tuple[FakePexip, ManagementClient],
) -> None:
    fake, client = pexip
    fake.add_end_user("olga@example.com")
    directory = PexipDirectory(client, allow_new_users=False)
    assert directory.vmrs_of("olga@example.com") == []
    fake.down = True
    assert directory.vmrs_of("olga@example.com") == []  # from the cache
    with pytest.raises(DirectoryUnavailable):
        PexipDirectory(client, allow_new_users=False).vmrs_of("olga@example.com")


def test_a_new_users_first_requests_together_create_one_end_user(
    pexip: tuple[FakePexip, ManagementClient],
) -> None:
    """allow_new_users: the add-in asks several times at once for a new user; Pexip refuses a
    second end user with one email, and that must not become directory_unavailable."""
    from concurrent.futures import ThreadPoolExecutor

    fake, client = pexip
    fake.latency = 0.2
    directory = PexipDirectory(client, allow_new_users=True)
    other_instance = PexipDirectory(client, allow_new_users=True)
    with ThreadPoolExecutor(8) as pool:
        asks = [pool.submit(directory.vmrs_of, "New.Starter@example.com") for _ in range(6)]
        asks.append(pool.submit(other_instance.vmrs_of, "new.starter@example.com"))
        assert [a.result(timeout=30) for a in asks] == [[]] * 7
    created = [u for u in fake.end_users.values() if u["primary_email_address"]]
    assert len(created) == 1
