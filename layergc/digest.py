"""Content digests (`<algorithm>:<hex>`) as the registry writes them."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import BinaryIO

from layergc.errors import InvalidDigest

# Algorithms the registry stores blobs under, with their hex lengths.
ALGORITHMS: dict[str, int] = {"sha256": 64, "sha384": 96, "sha512": 128}
# Their hex lengths differ: the hex alone names the algorithm.
ALGORITHM_OF_LENGTH: dict[int, str] = {length: name for name, length in ALGORITHMS.items()}
CANONICAL = "sha256"

_VALID_RE = re.compile(
    "|".join(f"{alg}:[0-9a-f]{{{length}}}" for alg, length in ALGORITHMS.items())
)
_DIGEST_RE = re.compile(r"([a-z0-9]+(?:[.+_-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)")


@dataclass(frozen=True, slots=True, order=True)
class Digest:
    algorithm: str
    hex: str

    @classmethod
    def parse(cls, value: str) -> Digest:
        """Parse and validate `sha256:<64 lowercase hex>` (likewise sha384, sha512)."""
        if not isinstance(value, str):
            raise InvalidDigest(repr(value), "digest is not a string")
        valid = _VALID_RE.fullmatch(value)
        if valid is not None:  # the hot path: a repeated mark parses ~100,000 of them
            algorithm, _, hexpart = value.partition(":")
            return cls(algorithm, hexpart)
        m = _DIGEST_RE.fullmatch(value)
        if m is None:
            raise InvalidDigest(value)
        algorithm, hexpart = m.groups()
        length = ALGORITHMS.get(algorithm)
        if length is None:
            raise InvalidDigest(value, "unsupported digest algorithm")
        if len(hexpart) != length:
            raise InvalidDigest(value, f"{algorithm} digest must have {length} hex characters")
        if not all(c in "0123456789abcdef" for c in hexpart):
            raise InvalidDigest(value, "digest hex must be lowercase hexadecimal")
        return cls(algorithm, hexpart)

    @classmethod
    def of(cls, data: bytes, algorithm: str = CANONICAL) -> Digest:
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())

    @classmethod
    def of_stream(
        cls, stream: BinaryIO, algorithm: str = CANONICAL, chunk: int = 8 << 20
    ) -> Digest:
        h = hashlib.new(algorithm)
        while block := stream.read(chunk):
            h.update(block)
        return cls(algorithm, h.hexdigest())

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


def is_valid(value: str) -> bool:
    try:
        Digest.parse(value)
    except InvalidDigest:
        return False
    return True
