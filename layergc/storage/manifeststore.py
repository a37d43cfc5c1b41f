"""Storing manifests the Go registry's way: a blob plus a revision link.

The manifest's bytes go to `blobs/sha256/<xx>/<hex>/data` (once, shared by
every repository) and `_manifests/revisions/sha256/<hex>/link` makes the
manifest part of the repository. What a manifest references is not checked
here: push its layers first, as a client does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from layergc.digest import Digest
from layergc.errors import InvalidLink, PathNotFound, UnknownManifest
from layergc.storage import paths
from layergc.storage.links import read_link, write_link

if TYPE_CHECKING:
    from layergc.storage.registry import Repository


class ManifestService:
    def __init__(self, repository: Repository) -> None:
        self.repository = repository
        self.driver = repository.registry.driver

    def put(self, content: bytes) -> Digest:
        """Store `content` and link it as a revision of this repository."""
        digest = Digest.of(content)
        blob_path = paths.blob_data(digest)
        with self.repository.registry.digest_lock(digest):
            if not self.driver.exists(blob_path):
                self.driver.put_content(blob_path, content)
        write_link(self.driver, paths.manifest_revision_link(self.repository.name, digest), digest)
        return digest

    def exists(self, digest: str | Digest) -> bool:
        try:
            self._blob(digest)
        except UnknownManifest:
            return False
        return True

    def get(self, digest: str | Digest) -> bytes:
        blob = self._blob(digest)
        try:
            return self.driver.get_content(paths.blob_data(blob))
        except PathNotFound:
            raise UnknownManifest(self.repository.name, str(digest)) from None

    def _blob(self, digest: str | Digest) -> Digest:
        dgst = digest if isinstance(digest, Digest) else Digest.parse(digest)
        name = self.repository.name
        try:
            return read_link(self.driver, paths.manifest_revision_link(name, dgst))
        except (PathNotFound, InvalidLink):
            raise UnknownManifest(name, str(dgst)) from None
