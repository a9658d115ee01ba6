"""A config reload of an instance that shares the database with another (docs/high-availability.md,
"Any instance answers..."): what it reports and logs is what changed in the file, the same on
every instance that read the same file, and it acts only on the integrations it runs.

Two services in one process on a real PostgreSQL, each running one of two integrations:

- a reload of the unchanged file reports, and logs, nothing changed, added or removed on both
  (not the integration the other instance runs as "added");
- a reload that changes an integration the other instance runs reports it changed, restarts
  nothing here and starts nothing here (that one keeps running where it runs); the owner's
  reload of the same file restarts it there;
- a reload that removes an integration the other instance runs reports it removed, and this
  instance no longer lists it."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import serving, spoolkit
from tests.sharedkit import write_config
from vmrsched import config, service

NAMES = ("alpha", "beta")


def runs(svc: service.Service) -> list[str]:
    return svc.ctx.shared.owned() if svc.ctx.shared is not None else []


@pytest.fixture
def pair(
    tmp_path: Path, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[service.Service, service.Service, dict[str, Path]]]:
    """(the instance that runs alpha, the one that runs beta, each one's config file)."""
    monkeypatch.setenv("VMRSCHED_DSN", dsn)
    files = {i: write_config(tmp_path, i, serving.free_port(), 2.0, NAMES) for i in ("a", "b")}
    first = service.start(config.load(files["a"]))
    second = None
    try:
        spoolkit.wait_for(lambda: runs(first) == list(NAMES), timeout=20)
        second = service.start(config.load(files["b"]))
        spoolkit.wait_for(
            lambda: second is not None and len(runs(first)) == len(runs(second)) == 1,
            timeout=30,
        )
        if runs(first) == ["alpha"]:
            yield first, second, {"alpha": files["a"], "beta": files["b"]}
        else:
            yield second, first, {"alpha": files["b"], "beta": files["a"]}
    finally:
        if second is not None:
            second.stop()
        first.stop()


def reloaded(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("config reloaded")]


def test_an_unchanged_reload_reports_nothing_changed_on_either_instance(
    pair: tuple[service.Service, service.Service, dict[str, Path]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs_alpha, runs_beta, _ = pair
    caplog.set_level(logging.INFO, "vmrsched.service")
    for svc in (runs_alpha, runs_beta):
        result = svc.reload()
        assert result is not None
        assert (result.changed, result.added, result.removed) == ([], [], [])
    assert reloaded(caplog) == [
        "config reloaded: changed=[] added=[] removed=[]; running here: ['alpha']",
        "config reloaded: changed=[] added=[] removed=[]; running here: ['beta']",
    ]


def test_a_changed_integration_restarts_only_where_it_runs(
    pair: tuple[service.Service, service.Service, dict[str, Path]],
) -> None:
    runs_alpha, runs_beta, files = pair
    for path in files.values():  # one change, in every instance's file
        path.write_text(path.read_text().replace('"Video Room alpha"', '"Video Room Alpha 2"'))
    result = runs_beta.reload()
    assert result is not None and (result.changed, result.added) == (["alpha"], [])
    assert runs_beta.ctx.status.state("alpha") == "elsewhere"  # nothing started here
    assert runs(runs_beta) == ["beta"]
    result = runs_alpha.reload()
    assert result is not None and result.changed == ["alpha"]
    spoolkit.wait_for(lambda: runs_alpha.ctx.status.state("alpha") == "running", timeout=20)
    assert runs_alpha.config.integrations[0].exchange.mailbox_name == "Video Room Alpha 2"


def test_an_integration_removed_from_the_file_is_reported_removed_where_it_did_not_run(
    pair: tuple[service.Service, service.Service, dict[str, Path]],
) -> None:
    _, runs_beta, files = pair
    path = files["beta"]
    text = path.read_text()
    first = text.index("[[integrations]]")  # alpha's table, then beta's
    path.write_text(text[:first] + text[text.index("[[integrations]]", first + 1) :])
    result = runs_beta.reload()
    assert result is not None
    assert (result.changed, result.added, result.removed) == ([], [], ["alpha"])
    assert list(runs_beta.readiness()[1]["integrations"]) == ["beta"]
    assert runs(runs_beta) == ["beta"]
