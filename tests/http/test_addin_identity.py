"""Whom the add-in's Entra ID access token names, checked over real HTTP against the fake
identity provider's keys: the address a sign-in of the same person gives (the `email` claim,
unless the token marks it unverified), else the tenant's own name of them (`preferred_username`,
`upn` in v1.0 tokens). Something that is not one address names nobody."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import jwt
import pytest

from tests.fakes.identity_provider import IdentityProvider
from vmrsched.signin.identity import EntraVerifier


def token(idp: IdentityProvider, **claims: Any) -> str:
    now = int(time.time())
    base = {
        "aud": "app-client-id",
        "iss": f"{idp.base}/{idp.tenant}/v2.0",
        "tid": idp.tenant,
        "nbf": now - 60,
        "exp": now + 3600,
        "oid": "00000000-aaaa-bbbb-cccc-000000000001",
        "scp": "access_as_user",
    }
    shown = {k: v for k, v in {**base, **claims}.items() if v is not None}
    return jwt.encode(shown, idp.entra_keys["k1"].pem, algorithm="RS256", headers={"kid": "k1"})


@pytest.mark.parametrize(
    ("claims", "named"),
    [
        pytest.param(
            {"email": "Olga@Contoso.example", "preferred_username": "o.p@contoso.example"},
            "olga@contoso.example",
            id="email first",
        ),
        pytest.param(
            {"email": "olga@elsewhere.example", "xms_edov": False, "upn": "olga@contoso.example"},
            "olga@contoso.example",
            id="unverified email passed over",
        ),
        pytest.param(
            {"email": "olga@elsewhere.example", "xms_edov": "false"},
            "",
            id="unverified email and nothing else",
        ),
        pytest.param(
            {"email": "olga@elsewhere.example", "xms_edov": 0, "upn": "olga@contoso.example"},
            "olga@contoso.example",
            id="unverified as 0",
        ),
        pytest.param({"unique_name": "olga@contoso.example"}, "", id="v1.0 unique_name alone"),
        pytest.param({"preferred_username": "olga@contoso.example"}, "olga@contoso.example"),
        pytest.param({"upn": "olga@contoso.example"}, "olga@contoso.example", id="v1.0 upn"),
        pytest.param(
            {"preferred_username": "olga@contoso.example\nforged log line"}, "", id="not one"
        ),
    ],
)
async def test_the_token_names_the_address_a_sign_in_would(
    idp: IdentityProvider, claims: dict[str, Any], named: str
) -> None:
    async with aiohttp.ClientSession() as session:
        verifier = EntraVerifier(idp.tenant, ["app-client-id"], idp.base, lambda: session)
        identity = await verifier.verify(token(idp, **claims))
    assert identity.email == named
    assert identity.user == f"entra:{idp.tenant}:00000000-aaaa-bbbb-cccc-000000000001"
