"""Names, tags, digests and driver paths: a trailing newline is not valid anywhere.

Python's `$` matches before a final newline, so `re.match(r"^...$")` would let
`"foo\n"` through; every validator must match the whole string.
"""

from __future__ import annotations

import pytest

from layergc.digest import Digest
from layergc.driver.base import validate_path
from layergc.errors import InvalidDigest, InvalidPath
from layergc.names import is_valid_repository_name, is_valid_tag

HEX = "a" * 64


@pytest.mark.parametrize("name", ["foo\n", "team/app\n", "Foo", "../x", "a//b", "/abs", "a/"])
def test_bad_repository_names(name: str) -> None:
    assert not is_valid_repository_name(name)


@pytest.mark.parametrize("name", ["foo", "team/app/api", "a.b_c__d-e---f", "x" * 255])
def test_good_repository_names(name: str) -> None:
    assert is_valid_repository_name(name)


def test_name_length_limit() -> None:
    assert not is_valid_repository_name("x" * 256)


@pytest.mark.parametrize(
    ("tag", "ok"), [("v1", True), ("v1\n", False), (".x", False), ("a" * 129, False)]
)
def test_tags(tag: str, ok: bool) -> None:
    assert is_valid_tag(tag) is ok


@pytest.mark.parametrize(
    "value",
    [f"sha256:{HEX}\n", f"sha256:{HEX.upper()}", f"sha256:{HEX[:-1]}", "sha256:../../etc", "md5:0"],
)
def test_bad_digests(value: str) -> None:
    with pytest.raises(InvalidDigest):
        Digest.parse(value)


def test_digest_round_trip() -> None:
    for alg, n in (("sha256", 64), ("sha384", 96), ("sha512", 128)):
        value = f"{alg}:{'0' * n}"
        assert str(Digest.parse(value)) == value


@pytest.mark.parametrize("path", ["/a\n", "/a/../b", "/a/./b", "a", "/a//b", "/a b", "/"])
def test_bad_paths(path: str) -> None:
    with pytest.raises(InvalidPath):
        validate_path(path)
