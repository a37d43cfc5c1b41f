"""Tags, laid out as distribution's tagstore.go lays them out.

Paths:

    _manifests/tags/<tag>/current/link                  the manifest the tag names now
    _manifests/tags/<tag>/index/<alg>/<hex>/link        every manifest it has named
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from layergc.digest import Digest
from layergc.driver.base import basename
from layergc.errors import InvalidLink, InvalidTag, PathNotFound, UnknownManifest, UnknownTag
from layergc.names import is_valid_tag
from layergc.storage import paths
from layergc.storage.links import read_link, write_link

if TYPE_CHECKING:
    from layergc.storage.registry import Repository


def _tag(tag: str) -> str:
    if not isinstance(tag, str) or not is_valid_tag(tag):
        raise InvalidTag(str(tag))
    return tag


class TagService:
    def __init__(self, repository: Repository) -> None:
        self.repository = repository
        self.driver = repository.registry.driver

    def tag(self, tag: str, digest: str | Digest) -> None:
        """Point `tag` at manifest `digest`, which must be a revision of this repository."""
        tag = _tag(tag)
        dgst = digest if isinstance(digest, Digest) else Digest.parse(digest)
        name = self.repository.name
        if not self.driver.exists(paths.manifest_revision_link(name, dgst)):
            raise UnknownManifest(name, str(dgst))
        # Index entry first, then the current link: Go's order, so a crash in
        # between leaves history without a dangling current tag.
        write_link(self.driver, paths.tag_index_link(name, tag, dgst), dgst)
        write_link(self.driver, paths.tag_current_link(name, tag), dgst)

    def get(self, tag: str) -> Digest:
        tag = _tag(tag)
        try:
            return read_link(self.driver, paths.tag_current_link(self.repository.name, tag))
        except (PathNotFound, InvalidLink):
            raise UnknownTag(self.repository.name, tag) from None

    def all(self) -> list[str]:
        try:
            listed = self.driver.list(paths.tags_dir(self.repository.name))
        except PathNotFound:
            return []
        return sorted(basename(p) for p in listed)

    def untag(self, tag: str) -> None:
        """Remove the tag and its history (idempotent, like Go's Untag)."""
        tag = _tag(tag)
        try:
            self.driver.delete(paths.tag_dir(self.repository.name, tag))
        except PathNotFound:
            pass
