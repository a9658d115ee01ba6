"""The management API client against the fake Management Node over real HTTP: paging through
tastypie lists, Location on 201, Pexip's error shapes, wrong credentials, outages."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.pexip_server import API, FakePexip
from tests.fakes.threaded import ThreadedServer
from vmrsched.config import PexipConfig
from vmrsched.pexip import management
from vmrsched.pexip.management import ManagementClient, PexipRefused, PexipUnavailable


@pytest.fixture
def fake() -> Iterator[tuple[FakePexip, ThreadedServer]]:
    pexip = FakePexip(password="pw")
    server = ThreadedServer(pexip.app()).start()
    yield pexip, server
    server.stop()


def client(url: str, password: str = "pw") -> ManagementClient:
    settings = PexipConfig(mode="management_api", management_url=url, management_username="admin")
    return ManagementClient(settings, password)


def test_lists_are_read_page_by_page(
    fake: tuple[FakePexip, ThreadedServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    pexip, server = fake
    for i in range(45):
        pexip.add_conference(f"Room {i}", [f"room{i}@example.com"], tag=f"t{i % 2}")
    monkeypatch.setattr(management, "PAGE", 20)
    names = [c["name"] for c in client(server.url).list("conference")]
    assert names == [f"Room {i}" for i in range(45)]
    assert sum(1 for m, p in pexip.requests if m == "GET") == 3
    # a filter Pexip knows narrows the list; one it does not know is ignored (all come back)
    assert len(list(client(server.url).list("conference", tag="t1"))) == 22
    assert len(list(client(server.url).list("conference", tag__startswith="t1"))) == 45


def test_create_update_delete_and_refusals(fake: tuple[FakePexip, ThreadedServer]) -> None:
    pexip, server = fake
    api = client(server.url)
    uri = api.create("conference", {"name": "A", "aliases": [{"alias": "a@example.com"}]})
    assert uri.startswith(API + "conference/") and uri.endswith("/")
    api.update(uri, {"description": "changed"})
    assert next(iter(pexip.conferences.values()))["description"] == "changed"
    with pytest.raises(PexipRefused) as duplicate:
        api.create("conference", {"name": "a", "aliases": [{"alias": "b@example.com"}]})
    assert duplicate.value.status == 400 and duplicate.value.about("name")
    with pytest.raises(PexipRefused) as alias_taken:
        api.create("conference", {"name": "B", "aliases": [{"alias": "a@example.com"}]})
    assert alias_taken.value.about("aliases") and not alias_taken.value.about("name")
    api.delete(uri)
    api.delete(uri)  # already gone: fine
    assert not pexip.conferences
    assert api.find_uri("ivr_theme", "Corporate") is None
    theme = pexip.add_theme("Corporate")
    assert api.find_uri("ivr_theme", "Corporate") == theme


def test_wrong_credentials_and_outages_are_unavailable(
    fake: tuple[FakePexip, ThreadedServer],
) -> None:
    pexip, server = fake
    with pytest.raises(PexipUnavailable, match="401"):
        list(client(server.url, password="wrong").list("conference"))
    pexip.fail_next = [503]
    with pytest.raises(PexipUnavailable, match="503"):
        list(client(server.url).list("conference"))
    url = server.url
    server.stop()
    with pytest.raises(PexipUnavailable, match="cannot be reached"):
        list(client(url).list("conference"))


# --- answers that are not the JSON Pexip documents (a proxy's page, a body cut off) ----------

ENVELOPE = '{"meta": {"limit": 500, "next": null, "offset": 0, "total_count": 1}, "objects": '


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        ("text/html", "<html><body>Please sign in to the proxy</body></html>"),
        ("application/json", ENVELOPE + '[{"name": "A", "resource_uri": "/api/admin/conf'),
        ("application/json", ""),
        ("application/json", "[]"),
        ("application/json", '{"objects": {"name": "A"}}'),
        ("application/json", ENVELOPE + "[1]}"),
        ("application/json", ENVELOPE + '[{"name": "no resource_uri"}]}'),
        ("application/json", '{"meta": {"next": 20}, "objects": []}'),
        ("application/json", '{"meta": [], "objects": []}'),
    ],
    ids=[
        "html",
        "cut off",
        "empty",
        "a list",
        "objects not a list",
        "an object not an object",
        "no resource_uri",
        "next not a link",
        "meta not an object",
    ],
)
def test_a_list_answer_pexip_does_not_document_is_unavailable(
    fake: tuple[FakePexip, ThreadedServer], kind: str, body: str
) -> None:
    pexip, server = fake
    pexip.list_body = (kind, body)
    with pytest.raises(PexipUnavailable, match="conference list"):
        list(client(server.url).list("conference"))


def test_aliases_that_are_not_conference_alias_objects_are_unavailable() -> None:
    assert management.alias_strings({"aliases": [{"alias": "a@x", "id": 1}]}) == ["a@x"]
    assert management.alias_strings({"resource_uri": "/c/1/"}) == []
    for aliases in ("a@x", ["a@x"], [{"alias": 7}], {"alias": "a@x"}):
        with pytest.raises(PexipUnavailable, match="conference_alias"):
            management.alias_strings({"aliases": aliases, "resource_uri": "/c/1/"})


def test_retry_after_is_read_in_seconds_or_as_an_http_date(
    fake: tuple[FakePexip, ThreadedServer],
) -> None:
    from datetime import UTC, datetime

    pexip, server = fake
    pexip.fail_next, pexip.retry_after = [503], "3600"
    with pytest.raises(PexipUnavailable) as raised:
        list(client(server.url).list("conference"))
    assert raised.value.retry_after == 3600.0  # what it said: the outage caps it
    assert "503 (Retry-After: 3600)" in str(raised.value)  # named in the logged error
    now = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
    assert management.retry_after("Mon, 02 Nov 2026 08:00:30 GMT", now) == 30.0
    assert management.retry_after("Mon, 02 Nov 2026 07:00:00 GMT", now) is None  # passed
    assert management.retry_after("soon", now) is None
    assert management.retry_after("", now) is None


def test_conference_aliases_are_added_and_removed_as_their_own_objects(
    fake: tuple[FakePexip, ThreadedServer],
) -> None:
    """Pexip's "Adding a Virtual Meeting Room alias": POST conference_alias with the alias and
    the conference's URI; an alias is removed by a DELETE of its own URI."""
    pexip, server = fake
    api = client(server.url)
    uri = api.create("conference", {"name": "A", "aliases": [{"alias": "a@example.com"}]})
    added = api.create("conference_alias", {"alias": "81000001", "conference": uri})
    assert added.startswith(API + "conference_alias/")
    (conference,) = api.list("conference")
    assert [a["alias"] for a in conference["aliases"]] == ["a@example.com", "81000001"]
    with pytest.raises(PexipRefused) as taken:
        api.create("conference_alias", {"alias": "A@example.com", "conference": uri})
    assert taken.value.about("alias")
    api.delete(added)
    assert pexip.alias_set() == {"a@example.com"}
