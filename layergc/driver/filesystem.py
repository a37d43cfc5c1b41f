"""A StorageDriver over a local folder, laid out as the Go registry's filesystem driver.

Safety: the driver never reads, writes, lists or deletes outside its root, and it
never follows a symbolic link below the root (the root itself may be one: it is
resolved once, when the driver is made). Every path is opened relative to a
descriptor of the root without following links:

- with Linux's openat2(2) and RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS where the
  kernel has it (5.6+): the kernel refuses any symlink and any escape, in one
  system call (about 6 us for a small get_content, less than a plain `open`);
- elsewhere one component at a time with O_NOFOLLOW through `dir_fd` (portable,
  about six times slower on deep registry paths).

So the safety does not rest on a check made before the access (no realpath, no
window between a check and a use). The policy, the same for every method:

- a path that crosses or ends at a symlink raises InvalidPath ("crosses a
  symbolic link"), whatever the link points to, inside the root or out;
- list, list_entries and walk still show a symlink (so that nothing below the
  root goes unseen by the garbage collector, which must fail closed), as a
  folder that is never entered: reading anything below it raises InvalidPath;
- deleting a folder that holds symlinks removes the links, never their targets.

Entries whose names are not valid driver path components are never shown:
no driver path can name them. This driver's own temporary files are skipped;
any other such entry makes `list` and `list_entries` of its folder raise
InvalidPath rather than hide it (a hidden repository folder would be a blind
spot of the garbage collector, which must fail closed); `walk` skips them.

Atomicity: put_content writes a temporary file in the same folder and renames it
over the target, so a reader sees the old or the new content, never a part.
Writers append to the real file (what they wrote survives close() and is
continued by a later writer(path, append=True), in any process); commit()
flushes and fsyncs, as Go's driver does.

Folders stay when their last file goes (as with Go's driver; the registry
relies on it, e.g. the empty revision folder of a deleted manifest).

Choices shared with the in-memory driver: reading a folder or listing a file
raises PathNotFound; writing a file where a folder is, or below a file, raises
InvalidPath.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import platform
import re
import secrets
import stat
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, BinaryIO, TypeVar, cast

from layergc.driver.base import FileInfo, FileWriter, StorageDriver, basename, validate_path
from layergc.errors import InvalidOffset, InvalidPath, PathNotFound, StorageDriverError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO someone left in the tree must not hang; it is
# ignored for regular files.
_READ_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK
_FILE_MODE = 0o666  # less the umask, as Go's driver
# Linux's MAX_RW_COUNT: one read(2) returns at most this many bytes (2 GiB less a
# page), so a shorter read of a larger file is not its end.
_MAX_READ = 0x7FFFF000
_COMPONENT_RE = re.compile(r"^[A-Za-z0-9._-]+$")
_LISTING_RE = re.compile(r"[A-Za-z0-9._-]+(?:/[A-Za-z0-9._-]+)*")  # names joined by "/"
_TEMP_SUFFIX = "~tmp"  # `~` is not valid in a driver path: never listed, never clashes

_SYMLINK_REASON = "path crosses a symbolic link"

# An opener resolves `rel` (a relative, validated, non-empty path) below the
# folder open as `dir_fd` and returns a new descriptor, never following a link.
Opener = Callable[[int, str, int], int]
_Method = TypeVar("_Method", bound=Callable[..., Any])


# --- openers -----------------------------------------------------------------


def _open_portable(dir_fd: int, rel: str, flags: int) -> int:
    """One component at a time, each opened with O_NOFOLLOW relative to its parent."""
    *folders, last = rel.split("/")
    fd = dir_fd
    try:
        for name in folders:
            try:
                next_fd = os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
            except NotADirectoryError:
                # O_DIRECTORY | O_NOFOLLOW says ENOTDIR for a symlink too: tell them apart.
                _raise_if_symlink(name, fd)
                raise
            if fd != dir_fd:
                os.close(fd)
            fd = next_fd
        try:
            return os.open(last, flags | os.O_NOFOLLOW, dir_fd=fd)
        except NotADirectoryError:
            _raise_if_symlink(last, fd)
            raise
    finally:
        if fd != dir_fd:
            os.close(fd)


def _raise_if_symlink(name: str, dir_fd: int) -> None:
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), name)


class _OpenHow(ctypes.Structure):
    _fields_ = [
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    ]


_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
# openat2 came after the syscall tables were unified: 437 on these architectures.
_OPENAT2_ARCHES = {"x86_64", "aarch64", "arm64", "i386", "i686", "riscv64", "ppc64le", "s390x"}
_SYS_OPENAT2 = 437


def _libc_function(name: str, restype: Any, *argtypes: Any) -> Any:
    """The C library's function `name`, typed (errno kept for ctypes.get_errno),
    or None when this system lacks it."""
    try:
        function = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    function.restype = restype
    function.argtypes = list(argtypes)
    return function


def _make_openat2() -> Opener | None:
    """An opener on openat2(2), or None when this system lacks it."""
    if sys.platform != "linux" or platform.machine() not in _OPENAT2_ARCHES:
        return None
    syscall = _libc_function(
        "syscall", ctypes.c_long,
        ctypes.c_long, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t,
    )  # fmt: skip
    if syscall is None:
        return None
    resolve = _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS
    hows: dict[int, _OpenHow] = {}
    size = ctypes.sizeof(_OpenHow)

    def openat2(dir_fd: int, rel: str, flags: int) -> int:
        how = hows.get(flags)
        if how is None:
            how = hows[flags] = _OpenHow(flags, 0, resolve)
        fd = syscall(_SYS_OPENAT2, dir_fd, rel.encode(), ctypes.byref(how), size)
        if fd < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), rel)
        return int(fd)

    # Probe: seccomp filters or old kernels say ENOSYS or EPERM.
    try:
        os.close(openat2(-100, ".", _DIR_FLAGS))  # -100 is AT_FDCWD
    except OSError:
        return None
    return openat2


_OPENAT2 = _make_openat2()


# --- helpers -----------------------------------------------------------------


def _translate(error: OSError, path: str) -> StorageDriverError:
    """The driver error for an OSError met while resolving or reading `path`."""
    if error.errno in (errno.ENOENT, errno.ENOTDIR):
        return PathNotFound(path)
    if error.errno in (errno.ELOOP, errno.EXDEV):
        return InvalidPath(path, _SYMLINK_REASON)
    return StorageDriverError(f"{path!r}: {error}")


def _mtime(st: os.stat_result) -> datetime:
    return datetime.fromtimestamp(st.st_mtime_ns / 1e9, UTC)


def _temp_name(name: str, kind: str = "") -> str:
    return f".{name[:100]}.{secrets.token_hex(8)}{kind}{_TEMP_SUFFIX}"


def _split(path: str) -> tuple[str, str]:
    """('a/b', 'c') for '/a/b/c'; ('', 'c') for '/c'."""
    head, _, name = path.rpartition("/")
    return head[1:], name


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data).cast("B")
    while view:
        view = view[os.write(fd, view) :]


def _remove_tree(dir_fd: int, name: str) -> None:
    """Remove folder `name` below `dir_fd` without following any link in it."""
    try:
        fd = os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=dir_fd)
    except FileNotFoundError:
        return
    except OSError as error:
        if error.errno not in (errno.ENOTDIR, errno.ELOOP):
            raise
        # Replaced by a file or a link meanwhile: remove that, not what it points to.
        _unlink_quietly(dir_fd, name)
        return
    try:
        with os.scandir(fd) as entries:
            children = [(e.name, e.is_dir(follow_symlinks=False)) for e in entries]
        for child, is_dir in children:
            if is_dir:
                _remove_tree(fd, child)
            else:
                _unlink_quietly(fd, child)
    finally:
        os.close(fd)
    try:
        os.rmdir(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass  # someone else (another collector) removed it first


def _unlink_quietly(dir_fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        _remove_tree(dir_fd, name)


def _nameable(path: str, names: list[str]) -> list[str]:
    """`names` (a listing of folder `path`) without layergc's own temporary files;
    InvalidPath if any other name is one no driver path can hold."""
    # One match over all the names (a blob prefix folder holds hundreds): the
    # usual case; a listing with an odd name is sorted out name by name.
    if not names or _LISTING_RE.fullmatch("/".join(names)):
        return names
    listed = [name for name in names if _COMPONENT_RE.fullmatch(name)]
    unnameable = [n for n in names if not _COMPONENT_RE.fullmatch(n)]
    unnameable = [n for n in unnameable if not n.endswith(_TEMP_SUFFIX)]
    if unnameable:
        # Hiding it would hide, say, a repository from the garbage collector,
        # which would then delete its blobs: the folder is unreadable instead.
        raise InvalidPath(path, f"folder holds {unnameable[0]!r}, which no driver path can name")
    return listed


def _driver_errors(method: _Method) -> _Method:
    """Turn an unexpected OSError (EACCES, ENOSPC, a race lost) into a
    StorageDriverError naming the path, so that callers catch one family."""

    @functools.wraps(method)
    def wrapper(self: FilesystemDriver, path: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, path, *args, **kwargs)
        except StorageDriverError:
            raise
        except OSError as error:
            raise StorageDriverError(f"{method.__name__} {path!r}: {error}") from error

    return cast(_Method, wrapper)


# --- the driver --------------------------------------------------------------


class FilesystemDriver(StorageDriver):
    """Storage in the folder `root` (created if missing).

    `openat2`: None uses openat2(2) when the kernel has it, False never does
    (the portable resolution, which tests exercise too), True requires it.

    `hold_root`: by default the root is opened afresh by every call, so that a
    long-lived driver follows a root that is replaced or remounted. A driver
    made for one garbage-collection run holds it open instead, until close():
    the run then sees one root from start to end, and each read costs two
    system calls less (a mark makes some 60,000 of them at 100,000 blobs).
    """

    name = "filesystem"

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        openat2: bool | None = None,
        hold_root: bool = False,
    ) -> None:
        os.makedirs(root, exist_ok=True)
        self.root = os.path.realpath(root)
        if not os.path.isdir(self.root):
            raise StorageDriverError(f"storage root is not a folder: {self.root!r}")
        if openat2 and _OPENAT2 is None:
            raise StorageDriverError("openat2(2) is not available on this system")
        self._open: Opener = _OPENAT2 if (openat2 is not False and _OPENAT2) else _open_portable
        self._held_root = os.open(self.root, _DIR_FLAGS) if hold_root else None

    def __repr__(self) -> str:
        return f"FilesystemDriver({self.root!r})"

    # --- resolution ------------------------------------------------------------

    def close(self) -> None:
        """Release the held root, if any (the driver then opens it per call)."""
        held, self._held_root = self._held_root, None
        if held is not None:
            os.close(held)

    def _root(self) -> tuple[int, bool]:
        """A descriptor of the root, and whether the caller must close it."""
        held = self._held_root
        if held is not None:
            return held, False
        return os.open(self.root, _DIR_FLAGS), True

    def _open_root(self) -> int:
        """A descriptor of the root that the caller owns (and closes)."""
        root, owned = self._root()
        return root if owned else os.dup(root)

    def _open_below(self, rel: str, path: str, flags: int) -> int:
        root, owned = self._root()
        try:
            return self._open(root, rel, flags)
        except OSError as error:
            raise _translate(error, path) from None
        finally:
            if owned:
                os.close(root)

    def _open_dir(self, rel: str, path: str) -> int:
        """A descriptor of the existing folder `rel` ('' is the root)."""
        return self._open_below(rel, path, _DIR_FLAGS) if rel else self._open_root()

    def _make_dirs(self, rel: str, path: str) -> int:
        """A descriptor of folder `rel`, created (with its parents) if missing."""
        if not rel:
            return self._open_root()
        root, owned = self._root()
        try:
            return self._open(root, rel, _DIR_FLAGS)
        except FileNotFoundError:
            pass
        except OSError as error:
            raise self._creation_error(error, path) from None
        finally:
            if owned:
                os.close(root)
        # Slow path, only when something is missing: one component at a time.
        fd = self._open_root()
        try:
            for name in rel.split("/"):
                try:
                    os.mkdir(name, dir_fd=fd)
                except FileExistsError:
                    pass
                next_fd = _open_portable(fd, name, _DIR_FLAGS)
                os.close(fd)
                fd = next_fd
        except OSError as error:
            os.close(fd)
            raise self._creation_error(error, path) from None
        return fd

    @staticmethod
    def _creation_error(error: OSError, path: str) -> StorageDriverError:
        if error.errno == errno.ENOTDIR:
            return InvalidPath(path, "a parent of the path is a file")
        return _translate(error, path)

    def _open_file(self, path: str) -> tuple[int, os.stat_result]:
        """A read descriptor of regular file `path` and its stat."""
        fd = self._open_below(path[1:], path, _READ_FLAGS)
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise PathNotFound(path)
            if not stat.S_ISREG(st.st_mode):
                raise InvalidPath(path, "not a regular file")
        except BaseException:
            os.close(fd)
            raise
        return fd, st

    # --- the contract ----------------------------------------------------------

    @_driver_errors
    def get_content(self, path: str, limit: int | None = None) -> bytes:
        validate_path(path)
        fd, st = self._open_file(path)
        try:
            # One byte more than the size: a read of a regular file that returns
            # less than asked has reached the end (unless the kernel capped the
            # read), so a file that did not grow takes one read; one that grew
            # meanwhile is still read whole (or to the limit).
            cap = sys.maxsize if limit is None else limit
            want = min(st.st_size + 1, cap)
            chunk = os.read(fd, want)
            if (len(chunk) < want and len(chunk) < _MAX_READ) or len(chunk) == cap:
                return chunk
            chunks, got = [chunk], len(chunk)
            while got < cap and (chunk := os.read(fd, min(cap - got, 1 << 16))):
                chunks.append(chunk)
                got += len(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    @_driver_errors
    def put_content(self, path: str, content: bytes) -> None:
        validate_path(path)
        rel, name = _split(path)
        dir_fd = self._make_dirs(rel, path)
        try:
            # rename(2) would replace a link, not follow it; refuse it all the same,
            # as every method does.
            try:
                self._lstat(path, dir_fd)
            except PathNotFound:
                pass
            temp = _temp_name(name)
            fd = os.open(
                temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                _FILE_MODE, dir_fd=dir_fd,
            )  # fmt: skip
            try:
                try:
                    _write_all(fd, content)
                finally:
                    os.close(fd)
                os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except BaseException as error:
                _unlink_quietly(dir_fd, temp)
                if isinstance(error, IsADirectoryError):
                    raise InvalidPath(path, "path is a folder") from None
                raise
        finally:
            os.close(dir_fd)

    @_driver_errors
    def reader(self, path: str, offset: int = 0) -> BinaryIO:
        validate_path(path)
        if offset < 0:
            raise InvalidOffset(path, offset)
        fd, st = self._open_file(path)
        if offset > st.st_size:
            os.close(fd)
            raise InvalidOffset(path, offset)
        os.lseek(fd, offset, os.SEEK_SET)
        return os.fdopen(fd, "rb")

    @_driver_errors
    def writer(self, path: str, append: bool = False) -> FileWriter:
        validate_path(path)
        rel, name = _split(path)
        dir_fd = self._make_dirs(rel, path)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            try:
                fd = os.open(name, flags | (0 if append else os.O_TRUNC), _FILE_MODE, dir_fd=dir_fd)
            except IsADirectoryError:
                raise InvalidPath(path, "path is a folder") from None
            except OSError as error:
                raise _translate(error, path) from None
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                os.close(fd)
                raise InvalidPath(path, "not a regular file")
        except BaseException:
            os.close(dir_fd)
            raise
        return _FilesystemWriter(path, dir_fd, fd, st.st_size)

    @_driver_errors
    def stat(self, path: str) -> FileInfo:
        validate_path(path, allow_root=True)
        if path == "/":
            fd = self._open_root()
            try:
                return FileInfo(path, 0, _mtime(os.fstat(fd)), True)
            finally:
                os.close(fd)
        st = self._lstat(path)
        if stat.S_ISDIR(st.st_mode):
            return FileInfo(path, 0, _mtime(st), True)
        if stat.S_ISREG(st.st_mode):
            return FileInfo(path, st.st_size, _mtime(st), False)
        raise InvalidPath(path, "not a regular file or folder")

    def _lstat(self, path: str, dir_fd: int | None = None) -> os.stat_result:
        """The stat of `path` itself; InvalidPath for a symlink."""
        rel, name = _split(path)
        fd = self._open_dir(rel, path) if dir_fd is None else dir_fd
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except OSError as error:
            raise _translate(error, path) from None
        finally:
            if dir_fd is None:
                os.close(fd)
        if stat.S_ISLNK(st.st_mode):
            raise InvalidPath(path, _SYMLINK_REASON)
        return st

    def list(self, path: str) -> list[str]:
        prefix = "" if path == "/" else path
        return [f"{prefix}/{name}" for name, _ in self.list_entries(path)]

    @_driver_errors
    def list_entries(self, path: str) -> list[tuple[str, bool]]:
        validate_path(path, allow_root=True)
        fd = self._open_dir(path[1:], path)
        try:
            with os.scandir(fd) as entries:
                # A symlink counts as a folder: the conservative answer (see the module doc).
                found = [
                    (e.name, e.is_dir(follow_symlinks=False) or e.is_symlink()) for e in entries
                ]
        finally:
            os.close(fd)
        names = _nameable(path, [name for name, _ in found])
        if len(names) == len(found):
            return found
        kept = set(names)
        return [entry for entry in found if entry[0] in kept]

    @_driver_errors
    def list_names(self, path: str) -> list[str]:
        validate_path(path, allow_root=True)
        fd = self._open_dir(path[1:], path)
        try:
            # listdir makes no DirEntry per child: several times cheaper than scandir
            # on the mark's largest listings (blob prefixes, layer links).
            found = os.listdir(fd)
        finally:
            os.close(fd)
        return _nameable(path, found)

    @_driver_errors
    def walk(self, path: str) -> Iterator[FileInfo]:
        validate_path(path, allow_root=True)
        # Opened now, so that a missing path raises here rather than at the first next().
        fd = self._open_dir(path[1:], path)
        return self._walk(fd, "" if path == "/" else path)

    def _walk(self, fd: int, prefix: str) -> Iterator[FileInfo]:
        try:
            try:
                with os.scandir(fd) as it:
                    entries = sorted((e for e in it if _COMPONENT_RE.fullmatch(e.name)), key=_name)
            except OSError as error:
                raise StorageDriverError(f"walk {prefix or '/'!r}: {error}") from error
            for entry in entries:
                child = f"{prefix}/{entry.name}"
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # removed while we walk
                if stat.S_ISLNK(st.st_mode):
                    yield FileInfo(child, 0, _mtime(st), True)  # shown, never entered
                elif stat.S_ISDIR(st.st_mode):
                    yield FileInfo(child, 0, _mtime(st), True)
                    try:
                        sub = os.open(entry.name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
                    except OSError:
                        continue  # removed, or replaced by a link, while we walk
                    yield from self._walk(sub, child)
                else:
                    yield FileInfo(child, st.st_size, _mtime(st), False)
        finally:
            os.close(fd)

    @_driver_errors
    def move(self, source: str, dest: str) -> None:
        validate_path(source)
        validate_path(dest)
        if dest.startswith(source + "/"):
            raise InvalidPath(dest, f"cannot move {source!r} into itself")
        src_rel, src_name = _split(source)
        src_dir = self._open_dir(src_rel, source)
        try:
            self._lstat(source, src_dir)
            if source == dest:
                return
            dst_rel, dst_name = _split(dest)
            dst_dir = self._make_dirs(dst_rel, dest)
            try:
                self._replace(src_dir, src_name, dst_dir, dst_name, source, dest)
            finally:
                os.close(dst_dir)
        finally:
            os.close(src_dir)

    def _replace(
        self, src_dir: int, src_name: str, dst_dir: int, dst_name: str, source: str, dest: str
    ) -> None:
        try:
            self._lstat(dest, dst_dir)  # refuses a symlink at dest, like every method
        except PathNotFound:
            pass
        try:
            os.rename(src_name, dst_name, src_dir_fd=src_dir, dst_dir_fd=dst_dir)
            return
        except FileNotFoundError:
            raise PathNotFound(source) from None
        except OSError as error:
            if error.errno not in (errno.EISDIR, errno.ENOTDIR, errno.ENOTEMPTY, errno.EEXIST):
                raise StorageDriverError(f"move {source!r} to {dest!r}: {error}") from None
        # rename(2) cannot replace a folder with a file, a file with a folder or a
        # non-empty folder: set the old dest aside, move, then remove the old one.
        aside = _temp_name(dst_name, ".old")
        os.rename(dst_name, aside, src_dir_fd=dst_dir, dst_dir_fd=dst_dir)
        try:
            os.rename(src_name, dst_name, src_dir_fd=src_dir, dst_dir_fd=dst_dir)
        except BaseException:
            os.rename(aside, dst_name, src_dir_fd=dst_dir, dst_dir_fd=dst_dir)
            raise
        _unlink_quietly(dst_dir, aside)

    @_driver_errors
    def delete(self, path: str) -> None:
        validate_path(path)
        rel, name = _split(path)
        dir_fd = self._open_dir(rel, path)
        try:
            st = self._lstat(path, dir_fd)
            if stat.S_ISDIR(st.st_mode):
                _remove_tree(dir_fd, name)
            else:
                try:
                    os.unlink(name, dir_fd=dir_fd)
                except FileNotFoundError:
                    raise PathNotFound(path) from None
        finally:
            os.close(dir_fd)


def _name(entry: os.DirEntry[str]) -> str:
    return entry.name


# Linux: once this many bytes were written since the last time, the writer asks the
# kernel to start writing them to disk (sync_file_range(2), SYNC_FILE_RANGE_WRITE:
# no waiting). The disk then works while the upload goes on, and commit's fsync,
# which still waits for every byte and the metadata, has little left to do (for
# 1 GiB here: 15 ms instead of 0.5 s). Only a hint: durability rests on the fsync.
_WRITEBACK_STEP = 8 << 20
_SYNC_FILE_RANGE_WRITE = 2


def _make_start_writeback() -> Callable[[int, int, int], None] | None:
    """A function starting the writeback of a byte range of a file, or None."""
    if sys.platform != "linux":
        return None
    sync_file_range = _libc_function(
        "sync_file_range", ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint
    )
    if sync_file_range is None:
        return None

    def start_writeback(fd: int, offset: int, length: int) -> None:
        # A failure (ESPIPE, EINVAL on odd filesystems) only loses the head start.
        sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)

    return start_writeback


_START_WRITEBACK = _make_start_writeback()


class _FilesystemWriter(FileWriter):
    """Appends to the real file through a buffer; close keeps it, cancel removes it."""

    def __init__(self, path: str, dir_fd: int, fd: int, size: int) -> None:
        self._path = path
        # The folder stays open so that cancel removes this very file even if
        # the folder was renamed meanwhile.
        self._dir_fd = dir_fd
        self._file = os.fdopen(fd, "wb", buffering=1 << 16)
        self._size = size
        self._unhinted = size  # offset from which writeback was not started yet
        self._closed = self._committed = self._cancelled = False

    def _check_open(self) -> None:
        for flag, state in (
            (self._closed, "closed"),
            (self._committed, "committed"),
            (self._cancelled, "cancelled"),
        ):
            if flag:
                raise StorageDriverError(f"writer for {self._path!r} already {state}")

    def _failed(self, action: str, error: OSError) -> StorageDriverError:
        return StorageDriverError(f"{action} {self._path!r}: {error}")

    def write(self, data: bytes) -> int:
        self._check_open()
        try:
            written = self._file.write(data)
            self._size += written
            if _START_WRITEBACK is not None and self._size - self._unhinted >= _WRITEBACK_STEP:
                self._file.flush()  # at most the buffer's 64 KiB: all of it in the file
                _START_WRITEBACK(self._file.fileno(), self._unhinted, self._size - self._unhinted)
                self._unhinted = self._size
        except OSError as error:
            raise self._failed("write", error) from error
        return written

    @property
    def size(self) -> int:
        return self._size

    def close(self) -> None:
        # Idempotent, unlike Go's, so that `with` after commit or cancel works.
        if self._closed:
            return
        self._closed = True
        try:
            if not self._file.closed:
                self._file.close()
        except OSError as error:
            raise self._failed("close", error) from error
        finally:
            os.close(self._dir_fd)

    def cancel(self) -> None:
        self._check_open()
        self._cancelled = True
        name = basename(self._path)
        try:
            mine = os.fstat(self._file.fileno())
            st = os.stat(name, dir_fd=self._dir_fd, follow_symlinks=False)
            # Only remove the file if it is still the one this writer wrote.
            if (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):
                os.unlink(name, dir_fd=self._dir_fd)
        except FileNotFoundError:
            pass
        except OSError as error:
            raise self._failed("cancel", error) from error
        finally:
            self.close()

    def commit(self) -> None:
        self._check_open()
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as error:
            raise self._failed("commit", error) from error
        self._committed = True
