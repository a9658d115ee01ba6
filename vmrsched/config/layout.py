"""Every path the service keeps under the server's data_dir, named once.

The allocator, the notifier, the sign-ins, the token caches, recovery, `store check` and the
offline admin tools all open the same files; asking `DataLayout` keeps them agreeing on where
those are without loading a config.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DataLayout:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def stores(self) -> Path:
        """One directory per integration: its alias store (the allocator's)."""
        return self.root / "store"

    def store(self, integration: str) -> Path:
        return self.stores / integration

    @property
    def queues(self) -> Path:
        """One directory per integration: its outgoing queue (the notifier's)."""
        return self.root / "queue"

    def queue(self, integration: str) -> Path:
        return self.queues / integration

    def spool(self, integration: str) -> Path:
        """The spool backend's folders, unless [integrations.spool] directory names others."""
        return self.root / "spool" / integration

    @property
    def decisions_dir(self) -> Path:
        return self.root / "decisions"

    def decisions(self, integration: str) -> Path:
        """The integration's decisions log (JSON lines)."""
        return self.decisions_dir / f"{integration}.jsonl"

    @property
    def sign_in(self) -> Path:
        """The user sign-in's key and each integration's sessions."""
        return self.root / "sign-in"

    @property
    def oauth_dir(self) -> Path:
        return self.root / "oauth"

    def oauth(self, integration: str) -> Path:
        """The EWS service account's delegated token cache."""
        return self.oauth_dir / f"{integration}.json"

    def graph(self, integration: str) -> Path:
        """The Graph backend's state (its subscription, the delta links)."""
        return self.root / "graph" / integration


def store_dir(data_dir: Path, integration: str) -> Path:
    """Where an integration's store lives (the allocator's, recovery's, the offline admin's)."""
    return DataLayout(data_dir).store(integration)


def queue_dir(data_dir: Path, integration: str) -> Path:
    """Where an integration's outgoing queue lives (the notifier's, the offline admin's)."""
    return DataLayout(data_dir).queue(integration)
