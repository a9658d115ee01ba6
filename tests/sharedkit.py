"""Instances sharing one PostgreSQL, as the two-instance tests and bench/failover.py run them:
each instance its own data directory and port, the spool directories and the database shared."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vmrsched import config
from vmrsched.postgres.leases import Lease
from vmrsched.store import OwnershipLostError


def write_config(
    tmp: Path,
    instance: str,
    port: int,
    lease: float,
    names: Sequence[str],
    server: str = "",
) -> Path:
    """One instance's config file (`server`: more [server] keys); the database's connection
    string comes from VMRSCHED_DSN."""
    folder = tmp / instance
    folder.mkdir(exist_ok=True)
    integrations = "".join(
        f"""
[[integrations]]
name = "{name}"
[integrations.exchange]
mailbox_name = "Video Room {name}"
mailbox_email = "vmr-{name}@example.com"
[integrations.addin]
token_validation = "none"
server_fqdn = "vc.example.com"
[integrations.single_use]
alias_prefix = "{index + 81}"
[integrations.spool]
directory = "{tmp / "spool" / name}"
poll_interval_seconds = 0.05
"""
        for index, name in enumerate(names)
    )
    config = folder / "vmrsched.toml"
    config.write_text(
        f"""
[server]
listen = "127.0.0.1:{port}"
data_dir = "{folder / "data"}"
log_format = "json"
{server}
[storage]
backend = "postgresql"
dsn_env = "VMRSCHED_DSN"
lease_seconds = {lease}
instance = "{instance}"
{integrations}"""
    )
    return config


def one_integration(tmp: Path, dsn: str) -> config.Config:
    """A service on the shared database with one spool integration, "alpha" (lease 2 s)."""
    doc: dict[str, Any] = {
        "server": {"data_dir": str(tmp / "data")},
        "storage": {"backend": "postgresql", "dsn_env": "DSN", "lease_seconds": 2},
        "integrations": [
            {
                "name": "alpha",
                "exchange": {"mailbox_name": "Video Room", "mailbox_email": "vmr@example.com"},
                "addin": {"token_validation": "none", "server_fqdn": "vc.example.com"},
                "spool": {"poll_interval_seconds": 0.05},
            }
        ],
    }
    return config.parse(doc, tmp, {"DSN": dsn})


def holder(held: dict[str, Lease]) -> Callable[[str], Lease]:
    """A lease_of over `held`: the lease of an integration in it, OwnershipLostError for any
    other (as an instance that does not, or no longer, hold it)."""

    def lease_of(name: str) -> Lease:
        if name not in held:
            raise OwnershipLostError(name)
        return held[name]

    return lease_of
