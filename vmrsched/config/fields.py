"""How a config key is declared: its rule beside its type and default, and secret values.

The dataclasses in `schema` declare every key with `_f(default, <rule>)`, so the type, default
and rule of a key are written in one place; `tables` reads the rules back from the field metadata
while it builds the dataclasses. Neither side needs the other, so this vocabulary lives apart from
both.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any

# the longest free text most keys take (names, labels, messages)
_TEXT = 250


def _rule(
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    max_len: int | None = None,
    min_len: int | None = None,
    choices: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    return {
        k: v
        for k, v in {
            "minimum": minimum,
            "maximum": maximum,
            "max_len": max_len,
            "min_len": min_len,
            "choices": choices,
        }.items()
        if v is not None
    }


def _f(default: Any, **rule: Any) -> Any:
    return field(default=default, metadata=_rule(**rule))


class Secret:
    """A secret's value, read from an environment variable or a file; never printed."""

    __slots__ = ("_value", "source")

    def __init__(self, value: str, source: str) -> None:
        self._value = value
        self.source = source

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret(from {self.source})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self.source)


# Keys whose value is secret: given only as `<key>_env` or `<key>_file`.
SECRET_KEYS = frozenset(
    {
        "service_account_password",
        "oauth_client_secret",
        "azure_client_secret",
        "admin_token",
        "policy_password",
        "management_password",
        "client_secret",
        "dsn",  # [storage]: a libpq connection string may hold the database password
    }
)
