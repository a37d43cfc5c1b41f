"""Resumable SHA-2 with Go's MarshalBinary layout, on both backends."""

from __future__ import annotations

import hashlib
import random
import subprocess
import sys
from pathlib import Path

import pytest

from layergc.storage import hashstate as hs
from tests.support.components import require_binary

REPO_ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ["openssl", "python"]
LENGTHS = [0, 1, 3, 55, 56, 63, 64, 65, 111, 112, 119, 127, 128, 129, 191, 255, 256, 1000, 4099]

# Reference states produced by Go 1.19 (go run main.go), from this program:
#
#   package main
#
#   import (
#       "crypto/sha256"
#       "crypto/sha512"
#       "encoding"
#       "encoding/hex"
#       "fmt"
#       "hash"
#   )
#
#   func main() {
#       data := []byte("The quick brown fox jumps over the lazy dog. ")
#       for i := 0; i < 3; i++ {
#           data = append(data, data...)
#       }
#       for _, c := range []struct {
#           name string
#           h    hash.Hash
#           n    int
#       }{{"sha256", sha256.New(), 0}, {"sha256", sha256.New(), 3},
#           {"sha256", sha256.New(), 100}, {"sha384", sha512.New384(), 200},
#           {"sha512", sha512.New(), 150}} {
#           c.h.Write(data[:c.n])
#           b, _ := c.h.(encoding.BinaryMarshaler).MarshalBinary()
#           fmt.Printf("%s %d %s\n", c.name, c.n, hex.EncodeToString(b))
#       }
#   }
GO_DATA = b"The quick brown fox jumps over the lazy dog. " * 8
GO_VECTORS = [
    (
        "sha256",
        0,
        "736861036a09e667bb67ae853c6ef372a54ff53a510e527f9b05688c1f83d9ab5be0cd19" + "00" * 72,
    ),
    (
        "sha256",
        3,
        "736861036a09e667bb67ae853c6ef372a54ff53a510e527f9b05688c1f83d9ab5be0cd19"
        "546865" + "00" * 61 + "0000000000000003",
    ),
    (
        "sha256",
        100,
        "736861035c000cae8ed219528a344222c75adb617a8c8794fcbcdaa085995fa1325753fc"
        "206a756d7073206f76657220746865206c617a7920646f672e2054686520717569636b20"
        + "00" * 28
        + "0000000000000064",
    ),
    (
        "sha384",
        200,
        "736861041e2cc1844b7d5729b6738fb1dae10fec12952a86148703318aafec02a5400c84"
        "30633af15a0c67d3bffb60ae0d7ebe3f26b70a4725736fa0bf95e1192179957b7920646f"
        "672e2054686520717569636b2062726f776e20666f78206a756d7073206f766572207468"
        "65206c617a7920646f672e2054686520717569636b2062726f776e20666f7820"
        + "00" * 56
        + "00000000000000c8",
    ),
    (
        "sha512",
        150,
        "736861073e6cf3074708a4ffa24b4282e208e7239e1a0292e1f189959158523774841104"
        "a70e20cba286a67d84745b38bea56f27f449cbf1e24f21e7b5b49355e8456fb37920646f"
        "672e2054686520717569636b2062726f776e" + "00" * 106 + "0000000000000096",
    ),
]


def test_the_fast_backend_is_in_use() -> None:
    # The layer service is only as fast as hashlib on the OpenSSL backend.
    assert hs.BACKEND == "openssl"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("algorithm", ["sha224", "sha256", "sha384", "sha512"])
def test_digest_equals_hashlib(backend: str, algorithm: str) -> None:
    rng = random.Random(algorithm)
    for n in LENGTHS:
        data = rng.randbytes(n)
        h = hs.new(algorithm, backend=backend)
        # Uneven pieces, so that blocks straddle updates.
        for i in range(0, n, 37):
            h.update(data[i : i + 37])
        assert h.length == n
        assert h.hexdigest() == hashlib.new(algorithm, data).hexdigest(), n
        # digest() does not end the hash: it can go on.
        h.update(b"more")
        assert h.digest() == hashlib.new(algorithm, data + b"more").digest()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("algorithm", ["sha256", "sha384", "sha512"])
def test_marshal_unmarshal_continue_equals_one_shot(backend: str, algorithm: str) -> None:
    rng = random.Random(f"{algorithm}-{backend}")
    for n in LENGTHS:
        data = rng.randbytes(n + rng.randrange(300))
        h = hs.new(algorithm, data[:n], backend=backend)
        state = h.marshal()
        assert len(state) == hs.SPECS[algorithm].marshaled_size
        for other in BACKENDS:  # a state written by one backend resumes on the other
            resumed = hs.unmarshal(state, algorithm, backend=other)
            assert resumed.length == n
            resumed.update(data[n:])
            assert resumed.hexdigest() == hashlib.new(algorithm, data).hexdigest()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("algorithm", "n", "expected"), GO_VECTORS)
def test_states_match_go_byte_for_byte(backend: str, algorithm: str, n: int, expected: str) -> None:
    assert len(GO_DATA) >= n
    h = hs.new(algorithm, GO_DATA[:n], backend=backend)
    assert h.marshal().hex() == expected
    resumed = hs.unmarshal(bytes.fromhex(expected), backend=backend)
    assert resumed.algorithm == algorithm
    resumed.update(GO_DATA[n:])
    assert resumed.hexdigest() == hashlib.new(algorithm, GO_DATA).hexdigest()


@pytest.mark.parametrize("algorithm", ["sha224", "sha256", "sha384", "sha512"])
def test_both_backends_write_the_same_state_bytes(algorithm: str) -> None:
    rng = random.Random(algorithm)
    for n in LENGTHS:
        data = rng.randbytes(n)
        assert (
            hs.new(algorithm, data, backend="openssl").marshal()
            == hs.new(algorithm, data, backend="python").marshal()
        )


def test_falls_back_to_python_without_libcrypto() -> None:
    script = (
        "import ctypes.util, hashlib\n"
        "ctypes.util.find_library = lambda name: None\n"
        "from layergc.storage import hashstate\n"
        "assert hashstate.BACKEND == 'python', hashstate.BACKEND\n"
        "h = hashstate.new('sha256', b'abc')\n"
        "h = hashstate.unmarshal(h.marshal())\n"
        "h.update(b'def')\n"
        "assert h.hexdigest() == hashlib.sha256(b'abcdef').hexdigest()\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=REPO_ROOT)


def test_go_state_sizes() -> None:
    assert hs.SPECS["sha256"].marshaled_size == 108
    assert hs.SPECS["sha512"].marshaled_size == 204


def test_bad_states_are_refused() -> None:
    good = hs.new("sha256", b"abc").marshal()
    with pytest.raises(hs.HashStateError):
        hs.unmarshal(b"")
    with pytest.raises(hs.HashStateError):
        hs.unmarshal(b"xyz\x03" + good[4:])
    with pytest.raises(hs.HashStateError):
        hs.unmarshal(good[:-1])
    with pytest.raises(hs.HashStateError):
        hs.unmarshal(good, "sha512")


def test_memoryview_and_bytearray_input() -> None:
    data = bytes(range(256)) * 10
    for chunk in (bytearray(data), memoryview(data), memoryview(bytearray(data))[5:]):
        h = hs.new("sha256")
        h.update(chunk)
        assert h.hexdigest() == hashlib.sha256(bytes(chunk)).hexdigest()


def test_copy_is_independent() -> None:
    h = hs.new("sha256", b"a" * 100)
    twin = h.copy()
    twin.update(b"b")
    assert h.hexdigest() == hashlib.sha256(b"a" * 100).hexdigest()
    assert twin.hexdigest() == hashlib.sha256(b"a" * 100 + b"b").hexdigest()


GO_RESUME = """
package main

import (
	"crypto/sha256"
	"crypto/sha512"
	"encoding"
	"encoding/hex"
	"fmt"
	"hash"
	"os"
)

func main() {
	var h hash.Hash
	switch os.Args[1] {
	case "sha256":
		h = sha256.New()
	case "sha384":
		h = sha512.New384()
	default:
		h = sha512.New()
	}
	state, _ := hex.DecodeString(os.Args[2])
	if err := h.(encoding.BinaryUnmarshaler).UnmarshalBinary(state); err != nil {
		panic(err)
	}
	rest, _ := hex.DecodeString(os.Args[3])
	h.Write(rest)
	fmt.Println(hex.EncodeToString(h.Sum(nil)))
}
"""


@pytest.mark.go_toolchain
def test_go_resumes_our_states(tmp_path: Path) -> None:
    """Go's UnmarshalBinary accepts what we write and finishes with the right digest.

    Deselected by default (pyproject's addopts): CI installs no Go toolchain (330 MB for
    this one test). The Go vectors above pin the format in every run, and the interop
    tests have the Go registry itself resume our sha256 states. Run it where Go is
    installed with `python -m pytest -m go_toolchain`."""
    go = require_binary("go", "golang-go")
    (tmp_path / "main.go").write_text(GO_RESUME)
    env = {"GO111MODULE": "off", "GOCACHE": str(tmp_path / "cache"), "HOME": str(tmp_path)}
    subprocess.run([go, "build", "-o", "resume", "main.go"], cwd=tmp_path, env=env, check=True)
    rng = random.Random(7)
    for algorithm in ("sha256", "sha384", "sha512"):
        for n in (0, 1, 64, 129, 1000):
            data = rng.randbytes(n + rng.randrange(200))
            state = hs.new(algorithm, data[:n]).marshal()
            out = subprocess.run(
                [str(tmp_path / "resume"), algorithm, state.hex(), data[n:].hex()],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
            assert out == hashlib.new(algorithm, data).hexdigest()
