"""Values built from one integration's config and rebuilt when a reload replaces it.

A reload swaps the frozen config objects while the service runs; whatever is derived from them
(compiled templates, token verifiers, the pane's texts) must follow it without each caller
tracking the swap.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from vmrsched.config.schema import IntegrationConfig

T = TypeVar("T")


class PerConfig(Generic[T]):
    """A value derived from one integration's config, rebuilt when a reload replaces the config
    object. Looked up by identity: hashing the (large, frozen) config on every request costs
    more than the work it saves."""

    def __init__(self, build: Callable[[IntegrationConfig], T]) -> None:
        self.build = build
        self._values: dict[str, tuple[IntegrationConfig, T]] = {}

    def __call__(self, integ: IntegrationConfig) -> T:
        entry = self._values.get(integ.name)
        if entry is None or entry[0] is not integ:
            entry = (integ, self.build(integ))
            self._values[integ.name] = entry
        return entry[1]
