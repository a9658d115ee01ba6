"""What a directory's files look like on disk, to tell "left as it was" from "rewritten"."""

from __future__ import annotations

from pathlib import Path


def snapshot(directory: Path) -> dict[str, tuple[int, int, bytes]]:
    """Each file by name: inode, mtime and content (a file replaced by a rename has a new
    inode; one rewritten in place, a new mtime)."""
    found = {}
    for path in sorted(directory.iterdir()):
        if path.is_file():
            info = path.stat()
            found[path.name] = (info.st_ino, info.st_mtime_ns, path.read_bytes())
    return found
