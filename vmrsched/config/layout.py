"""Where an integration's state lives under the server's data_dir.

The allocator, the notifier, recovery and the offline admin tools all open the same store and
queue; asking here keeps them agreeing on the paths without loading a config.
"""

from __future__ import annotations

from pathlib import Path


def store_dir(data_dir: Path, integration: str) -> Path:
    """Where an integration's store lives (the allocator's, recovery's, the offline admin's)."""
    return Path(data_dir) / "store" / integration


def queue_dir(data_dir: Path, integration: str) -> Path:
    """Where an integration's outgoing queue lives (the notifier's, the offline admin's)."""
    return Path(data_dir) / "queue" / integration
