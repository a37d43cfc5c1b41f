"""Resumable SHA-2 hashes whose state round-trips through Go's MarshalBinary layout.

The Go registry saves the running digest of an upload under
`_uploads/<uuid>/hashstates/<alg>/<offset>` with Go's crypto/sha256 and
crypto/sha512 `MarshalBinary`, so that a later PATCH goes on hashing without
reading the data again. To resume Go's uploads, and to let Go resume ours, we
read and write the same bytes:

    sha224/sha256: magic "sha\\x02"/"sha\\x03" | h[8] uint32 BE | block[64]  | len uint64 BE
    sha384/sha512: magic "sha\\x04"/"sha\\x07" | h[8] uint64 BE | block[128] | len uint64 BE

where `block` holds the `len % blocksize` bytes not yet compressed followed by
zeros, and `len` counts bytes. That is 108 bytes for SHA-256, 204 for SHA-512.

hashlib hides its state, so the fast backend drives OpenSSL's public low-level
SHA256_* / SHA512_* functions through ctypes and reads or writes their
SHA256_CTX / SHA512_CTX structs; it runs at hashlib's speed (same code, SHA
extensions included). A pure-Python backend takes over, slowly, when libcrypto
cannot be loaded or fails its self-check.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
import logging
import struct
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from math import isqrt
from typing import Any, NamedTuple

from layergc.errors import LayergcError

log = logging.getLogger(__name__)

Buffer = bytes | bytearray | memoryview


@dataclass(frozen=True, slots=True)
class _Spec:
    magic: bytes
    word: int  # bytes per state word
    block: int  # block size in bytes
    digest_size: int

    @property
    def marshaled_size(self) -> int:
        return len(self.magic) + 8 * self.word + self.block + 8


SPECS: dict[str, _Spec] = {
    "sha224": _Spec(b"sha\x02", 4, 64, 28),
    "sha256": _Spec(b"sha\x03", 4, 64, 32),
    "sha384": _Spec(b"sha\x04", 8, 128, 48),
    "sha512": _Spec(b"sha\x07", 8, 128, 64),
}
ALGORITHMS = tuple(SPECS)
_BY_MAGIC = {spec.magic: name for name, spec in SPECS.items()}


class HashStateError(LayergcError, ValueError):
    """A marshalled hash state is malformed or of another algorithm."""


def _spec(algorithm: str) -> _Spec:
    try:
        return SPECS[algorithm]
    except KeyError:
        raise ValueError(f"unsupported hash algorithm {algorithm!r}") from None


@dataclass(frozen=True, slots=True)
class GoState:
    """A SHA-2 state as Go's MarshalBinary sees it."""

    algorithm: str
    h: tuple[int, ...]
    pending: bytes  # the length % blocksize bytes not compressed yet
    length: int  # bytes hashed so far

    def to_bytes(self) -> bytes:
        spec = _spec(self.algorithm)
        fmt = ">8I" if spec.word == 4 else ">8Q"
        return b"".join(
            (
                spec.magic,
                struct.pack(fmt, *self.h),
                self.pending.ljust(spec.block, b"\0"),
                struct.pack(">Q", self.length),
            )
        )

    @classmethod
    def from_bytes(cls, data: bytes, algorithm: str | None = None) -> GoState:
        """Parse Go's layout; `algorithm`, when given, must be the one in the magic."""
        found = _BY_MAGIC.get(bytes(data[:4]))
        if found is None:
            raise HashStateError("invalid hash state identifier")
        if algorithm is not None and found != algorithm:
            raise HashStateError(f"hash state is {found}, expected {algorithm}")
        spec = SPECS[found]
        if len(data) != spec.marshaled_size:
            raise HashStateError(f"invalid {found} hash state size {len(data)}")
        fmt = ">8I" if spec.word == 4 else ">8Q"
        end_h = 4 + 8 * spec.word
        h = struct.unpack(fmt, data[4:end_h])
        (length,) = struct.unpack(">Q", data[end_h + spec.block :])
        pending = bytes(data[end_h : end_h + length % spec.block])
        return cls(found, h, pending, length)


class ResumableHash(ABC):
    """A hashlib-like SHA-2 object whose state can be exported and restored."""

    backend: str = "abstract"

    def __init__(self, algorithm: str) -> None:
        self.algorithm = algorithm
        self._spec = _spec(algorithm)

    @property
    def name(self) -> str:
        return self.algorithm

    @property
    def digest_size(self) -> int:
        return self._spec.digest_size

    @property
    def block_size(self) -> int:
        return self._spec.block

    @property
    @abstractmethod
    def length(self) -> int:
        """Bytes hashed so far (Go's `len`)."""

    @abstractmethod
    def update(self, data: Buffer) -> None: ...

    @abstractmethod
    def digest(self) -> bytes:
        """The digest of what was hashed so far; the object can go on hashing."""

    @abstractmethod
    def copy(self) -> ResumableHash: ...

    @abstractmethod
    def state(self) -> GoState: ...

    @abstractmethod
    def _load(self, state: GoState) -> None: ...

    def hexdigest(self) -> str:
        return self.digest().hex()

    def marshal(self) -> bytes:
        """The state in Go's MarshalBinary layout."""
        return self.state().to_bytes()


# --- pure Python ---------------------------------------------------------------
# The constants are derived, as FIPS 180-4 defines them, from the first primes
# rather than typed in: square roots for the initial values, cube roots for K.


def _primes(count: int) -> list[int]:
    found: list[int] = []
    n = 2
    while len(found) < count:
        if all(n % p for p in found if p * p <= n):
            found.append(n)
        n += 1
    return found


def _icbrt(n: int) -> int:
    x = 1 << ((n.bit_length() + 2) // 3)
    while True:
        y = (2 * x + n // (x * x)) // 3
        if y >= x:
            return x
        x = y


_P = _primes(80)
_M32, _M64 = (1 << 32) - 1, (1 << 64) - 1
_K256 = [_icbrt(p << 96) & _M32 for p in _P[:64]]
_K512 = [_icbrt(p << 192) & _M64 for p in _P]
_IV = {
    "sha224": tuple(isqrt(p << 128) & _M32 for p in _P[8:16]),
    "sha256": tuple(isqrt(p << 64) & _M32 for p in _P[:8]),
    "sha384": tuple(isqrt(p << 128) & _M64 for p in _P[8:16]),
    "sha512": tuple(isqrt(p << 128) & _M64 for p in _P[:8]),
}


class _Sha2Word(NamedTuple):
    """What FIPS 180-4's SHA-256 and SHA-512 families differ in: word size, round
    constants, rounds, and the rotations and shifts of their four sigma functions."""

    bits: int
    k: list[int]
    unpack: str
    rounds: int
    sigma0: tuple[int, int, int]  # message schedule: rotr, rotr, shr
    sigma1: tuple[int, int, int]
    big_sigma0: tuple[int, int, int]  # compression: rotr, rotr, rotr
    big_sigma1: tuple[int, int, int]


_SHA256_WORD = _Sha2Word(32, _K256, ">16I", 64, (7, 18, 3), (17, 19, 10), (2, 13, 22), (6, 11, 25))
_SHA512_WORD = _Sha2Word(64, _K512, ">16Q", 80, (1, 8, 7), (19, 61, 6), (28, 34, 39), (14, 18, 41))


def _compress(spec: _Sha2Word, h: list[int], block: bytes) -> None:
    """One block of SHA-2 compression into the state `h` (either family)."""
    bits, mask = spec.bits, (1 << spec.bits) - 1

    def rotr(x: int, n: int) -> int:
        return ((x >> n) | (x << (bits - n))) & mask

    (a0, a1, a2), (b0, b1, b2) = spec.sigma0, spec.sigma1
    (c0, c1, c2), (d0, d1, d2) = spec.big_sigma0, spec.big_sigma1
    w = list(struct.unpack(spec.unpack, block))
    for i in range(16, spec.rounds):
        s0 = rotr(w[i - 15], a0) ^ rotr(w[i - 15], a1) ^ (w[i - 15] >> a2)
        s1 = rotr(w[i - 2], b0) ^ rotr(w[i - 2], b1) ^ (w[i - 2] >> b2)
        w.append((w[i - 16] + s0 + w[i - 7] + s1) & mask)
    k = spec.k
    a, b, c, d, e, f, g, hh = h
    for i in range(spec.rounds):
        t1 = hh + (rotr(e, d0) ^ rotr(e, d1) ^ rotr(e, d2)) + ((e & f) ^ (~e & g)) + k[i] + w[i]
        t2 = (rotr(a, c0) ^ rotr(a, c1) ^ rotr(a, c2)) + ((a & b) ^ (a & c) ^ (b & c))
        a, b, c, d, e, f, g, hh = (t1 + t2) & mask, a, b, c, (d + t1) & mask, e, f, g
    for i, v in enumerate((a, b, c, d, e, f, g, hh)):
        h[i] = (h[i] + v) & mask


class PythonHash(ResumableHash):
    """FIPS 180-4 in Python: correct and portable, about a thousand times slower."""

    backend = "python"

    def __init__(self, algorithm: str) -> None:
        super().__init__(algorithm)
        self._h = list(_IV[algorithm])
        self._pending = b""
        self._length = 0
        word = _SHA256_WORD if self._spec.word == 4 else _SHA512_WORD
        self._compress = functools.partial(_compress, word)

    @property
    def length(self) -> int:
        return self._length

    def update(self, data: Buffer) -> None:
        data = bytes(data)
        self._length += len(data)
        buf = self._pending + data
        block = self._spec.block
        whole = len(buf) - len(buf) % block
        for i in range(0, whole, block):
            self._compress(self._h, buf[i : i + block])
        self._pending = buf[whole:]

    def digest(self) -> bytes:
        spec = self._spec
        twin = self.copy()
        # Padding: 0x80, zeros, then the bit length in the last 8 (SHA-256) or 16 bytes.
        size_field = 8 if spec.word == 4 else 16
        pad_len = (spec.block - (self._length + 1 + size_field) % spec.block) % spec.block
        twin.update(b"\x80" + b"\0" * pad_len + (self._length * 8).to_bytes(size_field, "big"))
        fmt = ">8I" if spec.word == 4 else ">8Q"
        return struct.pack(fmt, *twin._h)[: spec.digest_size]

    def copy(self) -> PythonHash:
        twin = PythonHash(self.algorithm)
        twin._load(self.state())
        return twin

    def state(self) -> GoState:
        return GoState(self.algorithm, tuple(self._h), self._pending, self._length)

    def _load(self, state: GoState) -> None:
        self._h = list(state.h)
        self._pending = state.pending
        self._length = state.length


# --- OpenSSL through ctypes ---------------------------------------------------


class _SHA256_CTX(ctypes.Structure):  # openssl/sha.h, SHA256state_st
    _fields_ = (
        ("h", ctypes.c_uint32 * 8),
        ("Nl", ctypes.c_uint32),  # bit count, low word
        ("Nh", ctypes.c_uint32),
        ("data", ctypes.c_uint8 * 64),  # SHA_LONG[16] in C, filled bytewise by memcpy
        ("num", ctypes.c_uint),
        ("md_len", ctypes.c_uint),
    )


class _SHA512_CTX(ctypes.Structure):  # openssl/sha.h, SHA512state_st
    _fields_ = (
        ("h", ctypes.c_uint64 * 8),
        ("Nl", ctypes.c_uint64),
        ("Nh", ctypes.c_uint64),
        ("data", ctypes.c_uint8 * 128),  # union {SHA_LONG64 d[16]; unsigned char p[128];}
        ("num", ctypes.c_uint),
        ("md_len", ctypes.c_uint),
    )


@dataclass(frozen=True, slots=True)
class _Funcs:
    ctx: type[ctypes.Structure]
    init: Callable[..., Any]
    update: Callable[..., Any]
    final: Callable[..., Any]
    word_bits: int  # width of Nl / Nh


def _load_libcrypto() -> dict[str, _Funcs] | None:
    name = ctypes.util.find_library("crypto")
    if name is None:
        return None
    try:
        lib = ctypes.CDLL(name)  # CDLL releases the GIL during calls: threads hash in parallel
        funcs = {}
        for alg, family, ctx, bits in (
            ("sha224", "SHA256", _SHA256_CTX, 32),
            ("sha256", "SHA256", _SHA256_CTX, 32),
            ("sha384", "SHA512", _SHA512_CTX, 64),
            ("sha512", "SHA512", _SHA512_CTX, 64),
        ):
            init = getattr(lib, f"{alg.upper()}_Init")
            update = getattr(lib, f"{family}_Update")
            final = getattr(lib, f"{family}_Final")
            init.argtypes = [ctypes.POINTER(ctx)]
            update.argtypes = [ctypes.POINTER(ctx), ctypes.c_void_p, ctypes.c_size_t]
            final.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctx)]
            for f in (init, update, final):
                f.restype = ctypes.c_int
            funcs[alg] = _Funcs(ctx, init, update, final, bits)
    except (OSError, AttributeError) as exc:
        log.warning("libcrypto unusable for resumable hashing", extra={"error": str(exc)})
        return None
    return funcs


_LIBCRYPTO = _load_libcrypto()


class OpenSSLHash(ResumableHash):
    """OpenSSL's SHA-2 with its context struct read and written directly."""

    backend = "openssl"

    def __init__(self, algorithm: str) -> None:
        super().__init__(algorithm)
        if _LIBCRYPTO is None:
            raise RuntimeError("libcrypto is not available")
        self._f = _LIBCRYPTO[algorithm]
        self._ctx = self._f.ctx()
        if self._f.init(ctypes.byref(self._ctx)) != 1:
            raise RuntimeError(f"{algorithm.upper()}_Init failed")

    @property
    def length(self) -> int:
        ctx: Any = self._ctx
        return ((ctx.Nh << self._f.word_bits) | ctx.Nl) >> 3

    def update(self, data: Buffer) -> None:
        if isinstance(data, bytes):
            # ctypes passes a pointer to the bytes' own buffer: no copy.
            ptr: Any = data
            n = len(data)
        else:
            view = memoryview(data).cast("B")
            n = len(view)
            if n == 0:
                return
            ptr = view.tobytes() if view.readonly else (ctypes.c_char * n).from_buffer(view)
        if self._f.update(ctypes.byref(self._ctx), ptr, n) != 1:
            raise RuntimeError("SHA update failed")

    def digest(self) -> bytes:
        twin = self.copy()
        out = ctypes.create_string_buffer(64)
        if self._f.final(out, ctypes.byref(twin._ctx)) != 1:
            raise RuntimeError("SHA final failed")
        return out.raw[: self.digest_size]

    def copy(self) -> OpenSSLHash:
        twin = OpenSSLHash(self.algorithm)
        ctypes.memmove(ctypes.byref(twin._ctx), ctypes.byref(self._ctx), ctypes.sizeof(self._ctx))
        return twin

    def state(self) -> GoState:
        ctx: Any = self._ctx
        length = self.length
        pending = bytes(ctx.data)[: length % self.block_size]
        return GoState(self.algorithm, tuple(ctx.h), pending, length)

    def _load(self, state: GoState) -> None:
        ctx: Any = self._ctx
        self._f.init(ctypes.byref(ctx))  # sets md_len for the algorithm
        ctx.h[:] = state.h
        bits = state.length * 8
        ctx.Nl = bits & ((1 << self._f.word_bits) - 1)
        ctx.Nh = bits >> self._f.word_bits
        ctypes.memset(ctypes.addressof(ctx.data), 0, self.block_size)
        ctypes.memmove(ctypes.addressof(ctx.data), state.pending, len(state.pending))
        ctx.num = len(state.pending)


def _openssl_self_check() -> bool:
    """Check our reading of the C structs against hashlib and the Python backend."""
    if _LIBCRYPTO is None:
        return False
    sample = bytes(range(256)) * 3
    for algorithm in ALGORITHMS:
        for cut in (0, 1, 65, 129, 300):
            fast, slow = OpenSSLHash(algorithm), PythonHash(algorithm)
            fast.update(sample[:cut])
            slow.update(sample[:cut])
            if fast.marshal() != slow.marshal():
                return False
            resumed = OpenSSLHash(algorithm)
            resumed._load(slow.state())
            resumed.update(sample[cut:])
            if resumed.digest() != hashlib.new(algorithm, sample).digest():
                return False
    return True


BACKEND = "openssl" if _openssl_self_check() else "python"
if BACKEND == "python":
    log.warning("resumable hashing falls back to pure Python (slow): libcrypto unusable")

_BACKENDS: dict[str, type[ResumableHash]] = {"openssl": OpenSSLHash, "python": PythonHash}


def new(algorithm: str, data: Buffer = b"", *, backend: str | None = None) -> ResumableHash:
    """A fresh resumable hash, on the fastest working backend unless one is named."""
    h = _BACKENDS[backend or BACKEND](algorithm)
    if data:
        h.update(data)
    return h


def unmarshal(
    data: bytes, algorithm: str | None = None, *, backend: str | None = None
) -> ResumableHash:
    """A hash resumed from Go's MarshalBinary bytes (HashStateError when malformed)."""
    state = GoState.from_bytes(data, algorithm)
    h = new(state.algorithm, backend=backend)
    h._load(state)
    return h
