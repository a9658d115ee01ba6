"""The smallest config file that runs: one spool integration on loopback, with token
validation off. Tests and benchmarks add what they need around it."""

from __future__ import annotations

from pathlib import Path


def spool_toml(
    data_dir: Path | str,
    *,
    name: str = "default",
    port: int | None = None,
    server: str = "",
    integration: str = "",
) -> str:
    listen = f'listen = "127.0.0.1:{port}"\n' if port is not None else ""
    return f"""
[server]
{listen}data_dir = "{data_dir}"
{server}
[[integrations]]
name = "{name}"
[integrations.exchange]
mailbox_name = "Video Room"
mailbox_email = "vmr@example.com"
[integrations.addin]
token_validation = "none"
{integration}"""
