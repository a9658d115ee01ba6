"""[server] data_dir is relative to the config file, as every path in the config (DESIGN,
"Security rules"): one file means the same data whatever directory the service, check-config or
an offline tool starts in, and the shipped config keeps its data in the checkout's ./data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vmrsched import config

ROOT = Path(__file__).resolve().parent.parent


def write(folder: Path, server: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "vmrsched.toml"
    path.write_text(
        f"""[server]
{server}
[[integrations]]
name = "hq"
[integrations.exchange]
mailbox_name = "Video Room"
mailbox_email = "vmr@example.com"
[integrations.addin]
token_validation = "none"
"""
    )
    return path


def test_a_relative_data_dir_is_relative_to_the_config_file_not_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "etc", 'data_dir = "state"')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = config.load(Path("../etc/vmrsched.toml"), environ={})
    assert cfg.data_dir == tmp_path / "etc" / "state"
    spool = cfg.integrations[0].spool_dir(cfg.data_dir)
    assert spool == tmp_path / "etc" / "state" / "spool" / "hq"  # beside it, as before
    assert config.load(path, environ={}).data_dir == cfg.data_dir  # from anywhere the same


def test_the_default_data_dir_is_beside_the_config_file_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Leaving the key out means what writing its documented default does."""
    path = write(tmp_path / "etc", "")
    monkeypatch.chdir(tmp_path)
    assert config.load(path, environ={}).data_dir == tmp_path / "etc" / "data"
    explicit = write(tmp_path / "other", 'data_dir = "./data"')
    assert config.load(explicit, environ={}).data_dir == tmp_path / "other" / "data"


def test_an_absolute_data_dir_is_kept_as_written(tmp_path: Path) -> None:
    path = write(tmp_path / "etc", f'data_dir = "{tmp_path / "var" / "lib"}"')
    assert config.load(path, environ={}).data_dir == tmp_path / "var" / "lib"


def test_the_shipped_config_keeps_its_data_in_the_checkouts_data_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README: `bash scripts/run` (from the checkout's root) runs on config/vmrsched.toml with
    the spool mailbox under ./data; the path is shown resolved, without a `config/..`."""
    monkeypatch.chdir(tmp_path)
    cfg = config.load(ROOT / "config" / "vmrsched.toml", environ={})
    assert cfg.server.data_dir == str(ROOT / "data")


def test_check_config_names_the_resolved_absolute_data_directory(tmp_path: Path) -> None:
    path = write(tmp_path / "etc", 'data_dir = "../var/vmrsched"')
    out = subprocess.run(
        [sys.executable, "-m", "vmrsched", "check-config", "etc/vmrsched.toml"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert f"{Path('etc/vmrsched.toml')}: OK, listening on 127.0.0.1:8080, data in " in out.stdout
    assert f"data in {tmp_path / 'var' / 'vmrsched'}\n" in out.stdout
    assert path.exists()


def test_a_data_directory_left_where_an_earlier_release_read_it_is_not_started_over(
    tmp_path: Path,
) -> None:
    """Upgrading: a relative data_dir used to be read from the working directory. Started on
    the now empty directory beside the config, the service would hand out its aliases again:
    every command refuses instead and names the absolute path to write."""
    write(tmp_path / "etc", 'data_dir = "data"')
    (tmp_path / "data" / "store" / "hq").mkdir(parents=True)  # an earlier release's state

    def run(config_file: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "vmrsched", "failed", "--config", config_file],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            check=False,
        )

    refused = run("etc/vmrsched.toml")
    assert refused.returncode == 1
    assert f'Set data_dir = "{tmp_path / "data"}"' in refused.stderr
    write(tmp_path / "etc", f'data_dir = "{tmp_path / "data"}"')
    assert run("etc/vmrsched.toml").returncode == 0
