"""The offline tools and a config whose records are in the shared database: the ones that work
on the files under data_dir, which such a service never reads, say so instead of answering from
(or writing into) records nobody uses; the admin commands go to a running instance's admin API
instead; recover works on the database (tests/postgres/test_recover_shared.py) and never on
files. Nothing here needs the database: no database answers at the configured address."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.serving import command, free_port
from tests.sharedkit import write_config
from vmrsched import config
from vmrsched.cli import admin as cli_admin
from vmrsched.errors import ServiceError
from vmrsched.service import OfflineAdmin

TOKEN = "shared-cli-admin-token-0123456789abcdef"
ENV = {"VMRSCHED_DSN": "postgresql://127.0.0.1:1/nothing", "VMRSCHED_ADMIN_TOKEN": TOKEN}


def shared_config(tmp_path: Path, token: bool = True) -> Path:
    server = 'admin_token_env = "VMRSCHED_ADMIN_TOKEN"' if token else ""
    return write_config(tmp_path, "a", free_port(), 2.0, ["alpha"], server=server)


def cli(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return command(path, *args, env=ENV)


def test_the_offline_admin_refuses_shared_records(tmp_path: Path) -> None:
    cfg = config.load(shared_config(tmp_path), environ=ENV)
    with pytest.raises(ServiceError, match="shared database") as refused:
        OfflineAdmin(cfg)
    assert refused.value.code == "shared_storage"


def test_the_admin_commands_ask_an_instance_not_the_data_directory(tmp_path: Path) -> None:
    """No instance runs here: the command says that one must, not what the files hold."""
    cfg = config.load(shared_config(tmp_path), environ=ENV)
    with cli_admin.admin_for(cfg, None) as (admin, how):
        assert how.startswith("through the admin API")
        with pytest.raises(ServiceError, match="need a running instance") as unreachable:
            admin.find_aliases("alpha")
    assert unreachable.value.code == "unreachable"
    listed = cli(shared_config(tmp_path), "aliases", "list")
    assert listed.returncode == 1
    assert "the records are in the shared database" in listed.stderr, listed.stderr
    assert "(unreachable)" in listed.stderr


def test_without_an_admin_token_the_command_says_what_to_set(tmp_path: Path) -> None:
    cfg = config.load(shared_config(tmp_path, token=False), environ=ENV)
    with (
        pytest.raises(ServiceError, match=r"shared database: set \[server\] admin_token_env"),
        cli_admin.admin_for(cfg, None),
    ):
        pass


def test_recover_without_the_database_says_so_and_touches_no_file(tmp_path: Path) -> None:
    done = cli(shared_config(tmp_path), "recover", "alpha")
    assert done.returncode == 1
    assert "the database did not answer" in done.stderr
    assert "(database_unavailable)" in done.stderr
    # and no file store was made on the way
    assert not config.DataLayout(tmp_path / "a" / "data").store("alpha").exists()


@pytest.mark.parametrize("action", ["check", "repair"])
def test_store_check_and_repair_name_where_the_records_are(tmp_path: Path, action: str) -> None:
    done = cli(shared_config(tmp_path), "store", action)
    assert done.returncode == 2
    assert "shared database" in done.stderr and "--data-dir" in done.stderr
