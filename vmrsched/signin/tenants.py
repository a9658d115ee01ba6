"""One Entra ID tenant's ID tokens, and no other's, for the user sign-in.

The user sign-in names a person by their email (a meeting's organizer is an address), and an
email is only as good as the tenant that vouches for it: Microsoft found the risk of an
unverified email across tenants, and asks apps to check that a token's `tid` is the tenant their
data belongs to. So an ID token must name the configured tenant in `tid`, and in `iss` that
tenant's v2.0 issuer (`https://<host>/<tenant id>/v2.0`).

The authority may name the tenant by its id or by one of its domain names; a domain name is
resolved to the id through the tenant's OpenID configuration (its `issuer` names the id), read
once an hour at most. An authority open to every tenant (`common`, `organizations`,
`consumers`) names none: check-config refuses it, and so does every sign-in."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Mapping
from typing import Any

import requests

from vmrsched.config import MULTI_TENANT, entra_tenant
from vmrsched.errors import Unavailable
from vmrsched.signin.oidc import HTTP_TIMEOUT, SignInRefused

TTL_SECONDS = 3600.0
_GUID = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
_ids: dict[str, tuple[float, str]] = {}
_lock = threading.Lock()


def check(authorization_uri: str, claims: Mapping[str, Any], session: requests.Session) -> None:
    """SignInRefused unless the ID token is of the tenant `authorization_uri` names: `tid` its
    id and, from the v2.0 endpoint, `iss` its issuer. Nothing to check for a URL that names no
    Entra ID tenant (AD FS, another provider). Blocking (may read the OpenID configuration)."""
    found = entra_tenant(authorization_uri)
    if found is None:
        return
    root, tenant = found
    wanted = tenant_id(root, tenant, session)
    tid, iss = str(claims.get("tid") or ""), str(claims.get("iss") or "")
    v2 = "/oauth2/v2.0/" in authorization_uri
    if tid.lower() != wanted.lower() or (v2 and iss != f"{root}/{tid}/v2.0"):
        raise SignInRefused(
            "the ID token is of another organization (Entra ID tenant) than the one this "
            "service signs in",
            detail=f"tid {tid[:100]!r}, iss {iss[:300]!r}; the configured tenant {tenant!r} "
            f"is {wanted!r}",
        )


def tenant_id(root: str, tenant: str, session: requests.Session) -> str:
    """The id of the tenant an authority names (`tenant`: as configured, an id or a domain)."""
    if tenant.lower() in MULTI_TENANT:
        raise SignInRefused(
            "this service signs in the users of one organization, and its sign-in is set up "
            f"for any ({tenant}): the administrator must name the organization's tenant",
        )
    if _GUID.fullmatch(tenant):
        return tenant
    uri = f"{root}/{tenant}/v2.0/.well-known/openid-configuration"
    with _lock:
        cached = _ids.get(uri)
    if cached is not None and time.monotonic() - cached[0] < TTL_SECONDS:
        return cached[1]
    found = _named_by(root, _issuer_at(uri, session))
    if not found:
        raise SignInRefused(
            "the identity provider's OpenID configuration names no tenant",
            detail=f"{uri} names no tenant id in its issuer",
        )
    with _lock:
        _ids[uri] = (time.monotonic(), found)
    return found


def _issuer_at(uri: str, session: requests.Session) -> str:
    try:
        response = session.get(uri, timeout=HTTP_TIMEOUT)
        response.raise_for_status()
        document = response.json()
    except (requests.RequestException, ValueError) as exc:
        raise Unavailable(
            f"the identity provider's OpenID configuration cannot be read: {exc}",
            "identity_provider_unreachable",
        ) from exc
    return str(document.get("issuer", "")) if isinstance(document, dict) else ""


def _named_by(root: str, issuer: str) -> str:
    """The tenant id in an Entra ID issuer, `<root>/<tenant id>/v2.0`; "" for anything else
    (the multi-tenant documents' `{tenantid}` placeholder, the consumer tenant's id)."""
    head, tail = f"{root}/", "/v2.0"
    if not (issuer.startswith(head) and issuer.endswith(tail)):
        return ""
    named = issuer[len(head) : -len(tail)]
    if not named or set(named) & set("/{}") or named.lower() in MULTI_TENANT:
        return ""
    return named
