"""Where a storage driver's path lies on disk."""

from __future__ import annotations

from pathlib import Path


def fs_path(root: Path, driver_path: str) -> Path:
    """The file behind a driver path of a FilesystemDriver rooted at `root`."""
    return root / driver_path.lstrip("/")
