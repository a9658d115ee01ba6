"""An admin's OpenID Connect sign-in to /admin: the authorization code flow with PKCE against
the configured provider, admitting only members of the configured admin group. It answers who
signed in; the console's session (http/admin.py) carries that name into every logged act.

Entra ID lists group object ids in the `groups` claim, but when a user is in more groups than
fit in a token it sends `_claim_names` instead (the "groups overage"), and reading the list
would need a Graph call with a permission the service otherwise lacks: such a sign-in is
refused with the way out (an app role, `groups_claim = "roles"`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import requests

from vmrsched import oidc
from vmrsched.config import AdminSignInConfig
from vmrsched.errors import Forbidden
from vmrsched.oidc import SignInRefused

log = logging.getLogger("vmrsched.admin")

CONTEXT = "admin"


class NotAnAdmin(Forbidden):
    default_code = "not_an_admin"


def client_of(cfg: AdminSignInConfig) -> oidc.Client:
    resource = {"resource": cfg.resource} if cfg.resource else {}
    return oidc.Client(
        authorization_uri=cfg.authorization_uri,
        token_uri=cfg.token_uri,
        client_id=cfg.client_id,
        client_secret=cfg.client_secret.reveal() if cfg.client_secret else None,
        scope=cfg.scope,
        authorize_extra={**resource, "prompt": "select_account"},
        token_extra=resource,
        audiences=frozenset({cfg.resource} - {""}),
        issuer=cfg.issuer,
        keys_uri=oidc.keys_uri_for(cfg.authorization_uri),
    )


def groups_of(claims: Mapping[str, Any], claim: str) -> list[str]:
    """The groups (or roles) the token lists; NotAnAdmin when the provider left them out
    because there are too many."""
    value = claims.get(claim)
    names = claims.get("_claim_names")
    if value is None and isinstance(names, dict) and claim in names:
        raise NotAnAdmin(
            f"the identity provider left out the {claim!r} claim: the user is in too many "
            'groups. Assign an app role to the admin group and set groups_claim = "roles"'
        )
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [str(v) for v in value]
    return []


class AdminSignIn:
    """Admin sign-ins in progress (in memory, ten minutes each)."""

    def __init__(
        self,
        http_for: Callable[[AdminSignInConfig], requests.Session],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.http_for = http_for
        self._attempts = oidc.Attempts(clock)

    def start(self, cfg: AdminSignInConfig, redirect_uri: str) -> str:
        """The provider's authorization URL for a new attempt."""
        return self._attempts.start(client_of(cfg), redirect_uri, CONTEXT)

    def finish(self, cfg: AdminSignInConfig, query: Mapping[str, str], redirect_uri: str) -> str:
        """Who signed in (their email), if a member of the admin group: SignInRefused for a
        bad attempt or answer, NotAnAdmin for anyone else. Blocking (HTTP)."""
        attempt, code = self._attempts.take(query, CONTEXT)
        client = client_of(cfg)
        answer = oidc.redeem(self.http_for(cfg), client, attempt, code, redirect_uri)
        if not answer.get("id_token"):
            raise SignInRefused("the identity provider sent no ID token (is openid in scope?)")
        claims = oidc.id_token_claims(client, answer, attempt, self.http_for(cfg))
        who = oidc.email_of(claims) or str(claims.get("sub", ""))
        if not who:
            raise SignInRefused("the identity provider did not say who signed in")
        wanted = cfg.admin_group.casefold()
        if not any(g.casefold() == wanted for g in groups_of(claims, cfg.groups_claim)):
            raise NotAnAdmin(f"{who} is not in the admin group")
        return who
