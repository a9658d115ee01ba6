"""Who a token names, read the one way every sign-in and token check reads it: the add-in's
Entra ID access tokens (identity.py) as well as the ID tokens of the user and admin sign-ins
(oidc.py), so that one person is one address whichever way they came in."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# where each provider names its user, in the order they are trusted: Entra ID's v1.0
# `unique_name` is a display value Microsoft does not promise to be unique, so only AD FS's counts
NAMED_BY = ("email", "preferred_username", "upn", "unique_name")
ENTRA_NAMED_BY = ("email", "preferred_username", "upn")


def email_of(claims: Mapping[str, Any], named_by: tuple[str, ...] = NAMED_BY) -> str:
    """The user's email: Entra ID puts it in `email` or `preferred_username` (`upn` in v1.0
    tokens), AD FS in `upn`, `email` or `unique_name`. An `email` the token itself marks as
    unverified (OpenID's `email_verified`, Entra ID's `xms_edov`: a domain its tenant does not
    own) is passed over: anyone could have typed it, and bookings are their organizer's by
    address. The add-in's tokens and the admins' sign-in name their user so (for the admins
    the group decides, not the address); the user sign-in takes it only from AD FS, and from
    Entra ID `users.trusted_email` alone."""
    unverified = says_false(claims.get("email_verified")) or says_false(claims.get("xms_edov"))
    for key in named_by:
        if key == "email" and unverified:
            continue
        value = claims.get(key)
        if isinstance(value, str) and "@" in value:
            return value.strip().lower()
    return ""


def says_false(value: object) -> bool:
    """A boolean claim that says false (Entra ID writes true/false; a string, or 0, is read
    alike: a claim that may say "unverified" is never taken for "verified")."""
    if isinstance(value, str):
        return value.strip().lower() in ("false", "0")
    return value is False or (type(value) is int and value == 0)
