"""Link files: a digest string with no newline, pointing into the blob store."""

from __future__ import annotations

from layergc.digest import Digest
from layergc.driver.base import StorageDriver
from layergc.errors import InvalidDigest, InvalidLink

# A link holds at most `sha512:` + 128 hex; anything much longer is not a link.
MAX_LINK_SIZE = 256


def parse_link(path: str, content: bytes) -> Digest:
    """The digest held by link file `path`, or InvalidLink saying what is wrong."""
    if not content:
        raise InvalidLink(path, "empty")
    if len(content) > MAX_LINK_SIZE:
        raise InvalidLink(path, f"over {MAX_LINK_SIZE} bytes, longer than any digest")
    try:
        text = content.decode("ascii")
    except UnicodeDecodeError:
        raise InvalidLink(path, "not ASCII") from None
    try:
        # The Go registry writes no newline, and its reader refuses one (go-digest checks
        # the length); we read the digest all the same (keeping is the safe side) and
        # the mark reports such a link as noncanonical.
        return Digest.parse(text.strip())
    except InvalidDigest as exc:
        raise InvalidLink(path, str(exc)) from None


def read_link(driver: StorageDriver, path: str) -> Digest:
    """Read and parse a link; PathNotFound when missing, InvalidLink when corrupt."""
    return parse_link(path, driver.get_content(path, MAX_LINK_SIZE + 1))


def write_link(driver: StorageDriver, path: str, digest: Digest) -> None:
    driver.put_content(path, str(digest).encode("ascii"))
