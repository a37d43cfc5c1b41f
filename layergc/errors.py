"""The typed errors layergc raises; every one derives from LayergcError."""

from __future__ import annotations


class LayergcError(Exception):
    """Base class of every error layergc raises on purpose."""


# --- storage drivers ---------------------------------------------------------


class StorageDriverError(LayergcError):
    """A storage driver failed."""


class InvalidPath(StorageDriverError, ValueError):
    """A driver path is malformed or would escape the storage root."""

    def __init__(self, path: str, reason: str = "invalid path") -> None:
        super().__init__(f"{reason}: {path!r}")
        self.path = path


class PathNotFound(StorageDriverError, FileNotFoundError):
    """A driver path does not exist."""

    def __init__(self, path: str) -> None:
        super().__init__(f"path not found: {path!r}")
        self.path = path


class InvalidOffset(StorageDriverError, ValueError):
    """A read or write offset is outside the object."""

    def __init__(self, path: str, offset: int) -> None:
        super().__init__(f"invalid offset {offset} for {path!r}")
        self.path = path
        self.offset = offset


# --- names and digests -------------------------------------------------------


class InvalidRepositoryName(LayergcError, ValueError):
    """A repository name breaks distribution's reference grammar."""

    def __init__(self, name: str, reason: str = "invalid repository name") -> None:
        super().__init__(f"{reason}: {name!r}")
        self.name = name


class InvalidDigest(LayergcError, ValueError):
    """A digest string is malformed or uses an unsupported algorithm."""

    def __init__(self, digest: str, reason: str = "invalid digest") -> None:
        super().__init__(f"{reason}: {digest!r}")
        self.digest = digest


# --- layer service -----------------------------------------------------------


class LayerUploadUnknown(LayergcError, KeyError):
    """No upload with that UUID exists (never started, cancelled or finished)."""

    def __init__(self, repository: str, uuid: str) -> None:
        super().__init__(f"upload unknown: {repository}@{uuid}")
        self.repository = repository
        self.uuid = uuid

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class UnknownLayer(LayergcError, KeyError):
    """The repository has no layer with that digest."""

    def __init__(self, repository: str, digest: str) -> None:
        super().__init__(f"unknown layer: {repository}@{digest}")
        self.repository = repository
        self.digest = digest

    def __str__(self) -> str:
        return str(self.args[0])


class DigestMismatch(LayergcError, ValueError):
    """The uploaded content does not hash to the digest the client gave."""

    def __init__(self, expected: str, actual: str) -> None:
        super().__init__(f"digest mismatch: expected {expected}, content is {actual}")
        self.expected = expected
        self.actual = actual


class UnknownManifest(LayergcError, KeyError):
    """The repository has no manifest revision with that digest."""

    def __init__(self, repository: str, digest: str) -> None:
        super().__init__(f"unknown manifest: {repository}@{digest}")
        self.repository = repository
        self.digest = digest

    def __str__(self) -> str:
        return str(self.args[0])


class UnknownTag(LayergcError, KeyError):
    """The repository has no tag of that name."""

    def __init__(self, repository: str, tag: str) -> None:
        super().__init__(f"unknown tag: {repository}:{tag}")
        self.repository = repository
        self.tag = tag

    def __str__(self) -> str:
        return str(self.args[0])


class InvalidTag(LayergcError, ValueError):
    """A tag breaks the reference grammar ([A-Za-z0-9_][A-Za-z0-9_.-]{0,127})."""

    def __init__(self, tag: str) -> None:
        super().__init__(f"invalid tag: {tag!r}")
        self.tag = tag


class InvalidLink(LayergcError, ValueError):
    """A link file is empty, truncated or does not hold a valid digest."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"invalid link {path!r}: {reason}")
        self.path = path


class InvalidManifest(LayergcError, ValueError):
    """A manifest cannot be parsed."""


# --- configuration -----------------------------------------------------------


class ConfigError(LayergcError, ValueError):
    """The configuration (command line, file, environment) is unusable."""
