"""Reading a config: `load` a TOML file or `parse` a parsed document into a `Config`, or raise
`ConfigError` with every problem found, each prefixed with its key path.

Admins fix configs in one pass only if they see all problems at once, so loading never stops at
the first error: `tables` builds the dataclasses and records what it cannot take, then the checks
of each integration (`checks`) and of the whole file (`service_checks`, and the server's own
below) add theirs to the same list.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vmrsched.config.addresses import _loopback_url, split_listen
from vmrsched.config.checks import _check_integration
from vmrsched.config.credentials import _check_pairs
from vmrsched.config.schema import Config, IntegrationConfig, ServerConfig, StorageConfig
from vmrsched.config.service_checks import (
    _check_admin_sign_in,
    _check_advertise_url,
    _check_alias_spaces,
    _check_directory_aliases,
    _check_policy_credentials,
    _check_public_url,
    _check_spools,
    _check_unique,
    _safe_on_loopback,
)
from vmrsched.config.tables import _Loader
from vmrsched.config.template_checks import _check_templates


class ConfigError(Exception):
    """Every problem found in a config file, each prefixed with its key path."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


MIN_ADMIN_TOKEN = 24


def parse(
    document: Mapping[str, Any],
    base_dir: Path = Path("."),
    environ: Mapping[str, str] | None = None,
    path: Path | None = None,
) -> Config:
    """Validate a parsed TOML document. Raises ConfigError listing every problem."""
    loader = _Loader(base_dir, os.environ if environ is None else environ)
    for key in document:
        if key not in ("server", "integrations", "storage"):
            close = difflib.get_close_matches(
                key, ["integrations", "server", "storage"], n=1, cutoff=0.75
            )
            loader.error(
                key, f"unknown key (did you mean {close[0]!r}?)" if close else "unknown key"
            )
    server = loader.build(ServerConfig, document.get("server", {}), "server")
    storage = loader.build(StorageConfig, document.get("storage", {}), "storage")
    if storage.backend == "postgresql" and storage.dsn is None:
        loader.error(
            "storage.dsn_env",
            'backend "postgresql" needs the database\'s connection string: set dsn_env (an '
            "environment variable) or dsn_file (a file) holding it",
        )
    try:
        split_listen(server.listen)
    except ValueError as exc:
        loader.error("server.listen", str(exc))
    _check_advertise_url(loader, server, storage)
    _check_public_url(loader, server)
    raw_integrations = document.get("integrations", [])
    integrations: list[IntegrationConfig] = []
    if not isinstance(raw_integrations, list) or not raw_integrations:
        loader.error("integrations", "define at least one [[integrations]] table")
        raw_integrations = []
    for index, raw in enumerate(raw_integrations):
        ipath = f"integrations[{index}]"
        integ = loader.build(IntegrationConfig, raw, ipath)
        integ = dataclasses.replace(integ, public_url=server.public_url.rstrip("/"))
        _check_integration(loader, integ, ipath)
        _check_templates(loader, integ, ipath)
        integrations.append(integ)
    _check_pairs(loader, server.admin_sign_in, integrations)
    _check_unique(loader, integrations)
    _check_alias_spaces(loader, integrations)
    _check_directory_aliases(loader, integrations)
    if server.demo and not _safe_on_loopback(server):
        loader.error("server.demo", "demo mode is allowed only when listening on loopback")
    if server.admin_token is not None and len(server.admin_token.reveal()) < MIN_ADMIN_TOKEN:
        loader.error(
            "server.admin_token",
            f"too short to resist guessing: use at least {MIN_ADMIN_TOKEN} random characters "
            "(e.g. `openssl rand -base64 32`)",
        )
    _check_admin_sign_in(loader, server)
    _check_policy_credentials(loader, server, integrations)
    _check_spools(loader, server, integrations)
    for index, proxy in enumerate(server.trusted_proxies):
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            loader.error(
                f"server.trusted_proxies[{index}]",
                f"must be an IP address or network (e.g. 127.0.0.1, 10.0.0.0/8), got {proxy!r}",
            )
    for index, integ in enumerate(integrations):
        if integ.addin.token_validation == "none":
            if not _safe_on_loopback(server) or not _loopback_url(server.public_url):
                loader.error(
                    f"integrations[{index}].addin.token_validation",
                    "'none' is allowed only when the server listens on loopback and public_url "
                    "(if set) is a loopback address too",
                )
            else:
                loader.warnings.append(
                    f"integrations[{index}].addin.token_validation: 'none' accepts unverified "
                    "add-in requests (loopback only; do not expose this server)"
                )
    if server.demo:
        loader.warnings.append("server.demo: demo mode is on (loopback only)")
    if loader.problems:
        raise ConfigError(loader.problems)
    return Config(server, tuple(integrations), path, tuple(loader.warnings), storage)


def load(path: Path | str, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate a TOML config file; relative file paths in it are relative to it."""
    file_path = Path(path)
    try:
        document = tomllib.loads(file_path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([f"{file_path}: cannot read: {exc.strerror}"]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{file_path}: not valid TOML: {exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{file_path}: not UTF-8: {exc}"]) from exc
    return parse(document, file_path.parent.absolute(), environ, file_path)
