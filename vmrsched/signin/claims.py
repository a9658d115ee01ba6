"""Who a token names, read the one way every sign-in and token check reads it: the add-in's
Entra ID access tokens (identity.py) as well as the ID tokens of the user and admin sign-ins
(oidc.py), so that one person is one address whichever way they came in."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def email_of(claims: Mapping[str, Any]) -> str:
    """The user's email: Entra ID puts it in `email` or `preferred_username` (`upn` in v1.0
    tokens), AD FS in `upn`, `email` or `unique_name`. An `email` the token itself marks as
    unverified (OpenID's `email_verified`, Entra ID's `xms_edov`: a domain its tenant does not
    own) is passed over: anyone could have typed it, and bookings are their organizer's by
    address. The add-in's tokens and the admins' sign-in name their user so (for the admins
    the group decides, not the address); the user sign-in takes it only from AD FS, and from
    Entra ID `users.trusted_email` alone."""
    unverified = says_false(claims.get("email_verified")) or says_false(claims.get("xms_edov"))
    for key in ("email", "preferred_username", "upn", "unique_name"):
        if key == "email" and unverified:
            continue
        value = claims.get(key)
        if isinstance(value, str) and "@" in value:
            return value.strip().lower()
    return ""


def says_false(value: object) -> bool:
    """A boolean claim that says false (Entra ID writes true/false; a string is read alike)."""
    return value is False or (isinstance(value, str) and value.strip().lower() == "false")
