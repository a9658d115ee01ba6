"""TOML configuration: frozen dataclasses, defaults, and validation that reports every problem.

Admins fix configs in one pass only if they see all problems at once, each with the key path
that names it (`integrations[0].single_use.alias_prefix: …`), so loading never stops at the first
error. Field rules (ranges, lengths, choices) live in the dataclass field metadata, so the type,
default and rule of a key are written in one place.

The package, top to bottom (imports go one way; pyproject's import contract checks it):
`loader` (`load`, `parse`, `ConfigError`); `checks` (one integration), `service_checks` (the
whole file), `credentials` (credentials come in pairs), `template_checks` (templates rendered on
sample values) and `reloading` (`PerConfig`); `schema` (the dataclasses) and `tables` (TOML tables
into dataclasses); `fields` (`_f`, `Secret`), `addresses` (hosts, listen addresses, URLs) and
`layout` (where an integration's state lives). Every name the rest of the service uses is
re-exported here: `from vmrsched.config import IntegrationConfig` and `config.load(...)`.
"""

from vmrsched.config.addresses import (
    DOMAIN_RE,
    HOST_PORT_RE,
    MULTI_TENANT,
    entra_tenant,
    is_loopback_host,
    split_listen,
)
from vmrsched.config.checks import EMAIL_RE, ICON_SIZE, NAME_RE, certificate_problem, png_size
from vmrsched.config.fields import SECRET_KEYS, Secret
from vmrsched.config.layout import DataLayout, queue_dir, store_dir
from vmrsched.config.loader import MIN_ADMIN_TOKEN, ConfigError, load, parse
from vmrsched.config.reloading import PerConfig, ServerChanges, as_reloaded
from vmrsched.config.schema import (
    AddinConfig,
    AdminSignInConfig,
    AdvancedConfig,
    Config,
    EmailConfig,
    ExchangeConfig,
    GraphConfig,
    IntegrationConfig,
    MetadataConfig,
    PersonalConfig,
    PexipConfig,
    ServerConfig,
    SingleUseConfig,
    SpoolConfig,
    StorageConfig,
)
from vmrsched.config.service_checks import MIN_POLICY_PASSWORD, alias_space, range_clashes
from vmrsched.config.tables import PATH_KEYS

__all__ = [
    "DOMAIN_RE",
    "EMAIL_RE",
    "HOST_PORT_RE",
    "ICON_SIZE",
    "MIN_ADMIN_TOKEN",
    "MIN_POLICY_PASSWORD",
    "MULTI_TENANT",
    "NAME_RE",
    "PATH_KEYS",
    "SECRET_KEYS",
    "AddinConfig",
    "AdminSignInConfig",
    "AdvancedConfig",
    "Config",
    "ConfigError",
    "DataLayout",
    "EmailConfig",
    "ExchangeConfig",
    "GraphConfig",
    "IntegrationConfig",
    "MetadataConfig",
    "PerConfig",
    "PersonalConfig",
    "PexipConfig",
    "Secret",
    "ServerChanges",
    "ServerConfig",
    "SingleUseConfig",
    "SpoolConfig",
    "StorageConfig",
    "alias_space",
    "as_reloaded",
    "certificate_problem",
    "entra_tenant",
    "is_loopback_host",
    "load",
    "parse",
    "png_size",
    "queue_dir",
    "range_clashes",
    "split_listen",
    "store_dir",
]
