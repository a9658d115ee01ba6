"""Credentials come in pairs (DESIGN, "Security rules"): a user without its password, a
password without its user, a client secret without its client id are refused wherever they
appear, whether or not the backend, mode or feature that reads them is on.

Half a pair is an admin's mistake even where nothing reads it today: it starts to matter the
day the feature is switched on (by a reload, at night), and then fails as an outage rather
than at check time. The checks that need a credential for the feature in use (`checks`,
`service_checks`) still say so in their own words; a key they already reported is not
reported twice.
"""

from __future__ import annotations

from vmrsched.config.schema import (
    AdminSignInConfig,
    ExchangeConfig,
    GraphConfig,
    IntegrationConfig,
    PersonalConfig,
    PexipConfig,
)
from vmrsched.config.tables import _Loader


def _once(loader: _Loader, key: str, message: str) -> None:
    """Report `message` under `key` unless a problem there is already reported."""
    if not any(p.startswith(f"{key}:") for p in loader.problems):
        loader.error(key, message)


def _pair(
    loader: _Loader,
    path: str,
    user: tuple[str, bool],
    secret: tuple[str, bool],
    user_alone_ok: bool = False,
) -> None:
    """One pair: `user` and `secret` are (key, whether it is set); the secret's key is
    reported as `<key>_env`, where an admin writes it."""
    (user_key, has_user), (secret_key, has_secret) = user, secret
    if has_secret and not has_user:
        _once(loader, f"{path}.{user_key}", f"{secret_key} is set, so its {user_key} is needed")
    elif has_user and not has_secret and not user_alone_ok:
        _once(
            loader,
            f"{path}.{secret_key}_env",
            f"{user_key} is set, so its {secret_key} is needed ({secret_key}_env or "
            f"{secret_key}_file): credentials come in pairs",
        )


def _check_admin_sign_in_pair(loader: _Loader, s: AdminSignInConfig) -> None:
    """A client id alone is a public client (PKCE only); a secret alone names no client."""
    _pair(
        loader,
        "server.admin_sign_in",
        ("client_id", bool(s.client_id)),
        ("client_secret", s.client_secret is not None),
        user_alone_ok=True,
    )


def _check_exchange_pairs(loader: _Loader, ex: ExchangeConfig, path: str) -> None:
    """oauth_delegated names its service account without a password (it signs in once in a
    browser); every other use of the account needs both."""
    _pair(
        loader,
        path,
        ("service_account_username", bool(ex.service_account_username)),
        ("service_account_password", ex.service_account_password is not None),
        user_alone_ok=ex.authentication == "oauth_delegated",
    )
    _pair(
        loader,
        path,
        ("oauth_client_id", bool(ex.oauth_client_id)),
        ("oauth_client_secret", ex.oauth_client_secret is not None),
    )


def _check_graph_pair(loader: _Loader, graph: GraphConfig, path: str) -> None:
    """The app registration's id with one credential: a secret or a certificate."""
    has_secret = graph.client_secret is not None
    if (has_secret or graph.client_certificate_file) and not graph.client_id:
        used = "client_secret" if has_secret else "client_certificate_file"
        _once(loader, f"{path}.client_id", f"{used} is set, so its client_id is needed")
    elif graph.client_id and not (has_secret or graph.client_certificate_file):
        _once(
            loader,
            f"{path}.client_secret_env",
            "client_id is set, so its credential is needed: client_secret_env (or _file), or "
            "client_certificate_file",
        )


def _check_pexip_pair(loader: _Loader, px: PexipConfig, path: str) -> None:
    _pair(
        loader,
        path,
        ("management_username", bool(px.management_username)),
        ("management_password", px.management_password is not None),
    )


def _check_personal_pair(loader: _Loader, p: PersonalConfig, path: str) -> None:
    """Azure's sign-in is a confidential client (id and secret); AD FS's may be public."""
    _pair(
        loader,
        path,
        ("user_oauth_client_id", bool(p.user_oauth_client_id)),
        ("azure_client_secret", p.azure_client_secret is not None),
        user_alone_ok=p.authentication_provider == "adfs",
    )


def _check_pairs(
    loader: _Loader, admin_sign_in: AdminSignInConfig, integrations: list[IntegrationConfig]
) -> None:
    """Every credential pair of the file, each half reported with its key path."""
    _check_admin_sign_in_pair(loader, admin_sign_in)
    for index, integ in enumerate(integrations):
        path = f"integrations[{index}]"
        _check_exchange_pairs(loader, integ.exchange, f"{path}.exchange")
        _check_graph_pair(loader, integ.graph, f"{path}.graph")
        _check_pexip_pair(loader, integ.pexip, f"{path}.pexip")
        _check_personal_pair(loader, integ.personal, f"{path}.personal")
