"""The layer service: Registry -> Repository -> layers(), manifests(), tags()."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from layergc.storage.registry import Registry, Repository

__all__ = ["Registry", "Repository"]


def __getattr__(name: str) -> Any:
    # Lazy, so that `from layergc.storage import paths` stays as light as it was.
    if name in __all__:
        from layergc.storage import registry

        return getattr(registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
