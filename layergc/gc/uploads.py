"""Stale partial uploads: `_uploads/<uuid>/` folders older than the upload timeout.

Age comes from the upload's `startedat` (RFC 3339, as the Go registry writes it).
A missing or unreadable `startedat` falls back to the newest modification time
of anything in the folder, with a warning: a folder someone still writes to is
never purged because its `startedat` got lost.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from layergc.driver.base import StorageDriver
from layergc.errors import PathNotFound, StorageDriverError
from layergc.storage import paths

# An RFC 3339 time is under 40 bytes: a larger startedat is refused from its head.
MAX_STARTED_AT_SIZE = 256

# ASCII digits only: `\d` would take any Unicode digit, which is no RFC 3339.
_RFC3339 = re.compile(
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.([0-9]+))?"
    r"(?:[Zz]|[+-][0-9]{2}:[0-9]{2})\Z"
)


def parse_rfc3339(text: str) -> datetime:
    """Parse any RFC 3339 time (Go writes seconds; nanoseconds are accepted too)."""
    text = text.strip()
    m = _RFC3339.fullmatch(text)
    if m is None:
        raise ValueError(f"not an RFC 3339 time: {text[:64]!r}")
    if m.group(1) and len(m.group(1)) > 6:  # Python keeps microseconds only
        text = text[: m.start(1)] + m.group(1)[:6] + text[m.end(1) :]
    value = datetime.fromisoformat(text.replace("z", "Z"))
    try:
        return value.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:59:59-01:00 is past what datetime holds
        raise ValueError(f"RFC 3339 time out of range: {text[:64]!r}") from None


def read_started_at(driver: StorageDriver, path: str) -> datetime:
    """The time in a `startedat` file: PathNotFound when there is none, ValueError
    (UnicodeDecodeError too) when it holds no RFC 3339 time. One byte past the
    longest accepted is read, so that a larger file is refused, not cut to size."""
    raw = driver.get_content(path, MAX_STARTED_AT_SIZE + 1)
    if len(raw) > MAX_STARTED_AT_SIZE:
        raise ValueError(f"over {MAX_STARTED_AT_SIZE} bytes, longer than any RFC 3339 time")
    return parse_rfc3339(raw.decode("utf-8", "strict"))


@dataclass(slots=True)
class UploadInfo:
    repository: str
    uuid: str
    started_at: datetime
    size: int
    warning: str | None = None  # set when startedat could not be used


def inspect_upload(driver: StorageDriver, repository: str, uuid: str) -> UploadInfo:
    """Age and size of one upload; raises PathNotFound if the folder vanished."""
    size = 0
    try:
        size = driver.stat(paths.upload_data(repository, uuid)).size
    except PathNotFound:
        pass
    started_path = paths.upload_started_at(repository, uuid)
    try:
        started = read_started_at(driver, started_path)
        return UploadInfo(repository, uuid, started, size)
    except PathNotFound:
        reason = "startedat is missing"
    except (UnicodeDecodeError, ValueError) as exc:
        reason = f"startedat is unreadable ({exc})"
    newest = newest_mod_time(driver, paths.upload_dir(repository, uuid))
    return UploadInfo(
        repository, uuid, newest, size, warning=f"{reason}; using newest modification time"
    )


def newest_mod_time(driver: StorageDriver, folder: str) -> datetime:
    newest = driver.stat(folder).mod_time
    for info in driver.walk(folder):
        if info.mod_time > newest:
            newest = info.mod_time
    return newest


def stale_uploads(
    driver: StorageDriver,
    uploads: Iterable[tuple[str, str]],
    timeout: timedelta,
    now: datetime,
) -> tuple[list[UploadInfo], list[UploadInfo], list[tuple[str, str, str]]]:
    """Split uploads into (stale, fresh, errors as (repository, uuid, message))."""
    stale: list[UploadInfo] = []
    fresh: list[UploadInfo] = []
    errors: list[tuple[str, str, str]] = []
    for repository, uuid in uploads:
        try:
            info = inspect_upload(driver, repository, uuid)
        except PathNotFound:
            continue  # finished or cancelled since it was listed
        except StorageDriverError as exc:
            errors.append((repository, uuid, str(exc)))
            continue
        (stale if now - info.started_at > timeout else fresh).append(info)
    return stale, fresh, errors


def purge_upload(driver: StorageDriver, info: UploadInfo) -> None:
    """Delete an upload folder, and on S3 the multipart uploads it left in flight."""
    folder = paths.upload_dir(info.repository, info.uuid)
    abort = getattr(driver, "abort_multipart_uploads", None)
    if abort is not None:
        abort(folder)
    try:
        driver.delete(folder)
    except PathNotFound:
        pass
