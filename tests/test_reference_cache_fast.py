"""The reference cache adapter's fast path (gc/index.py, IndexReferenceCache.get_many)
must give exactly what ManifestRefs.from_dict gives, and fall back to it (with its
errors) for anything it does not take."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import insert

from layergc.digest import Digest
from layergc.gc.db import open_index
from layergc.gc.index import Index, ManifestReferences
from layergc.storage.manifests import ManifestRefs


@pytest.fixture
def index(tmp_path: Path) -> Iterator[Index]:
    with open_index(str(tmp_path / "index.db")) as idx:
        yield idx


def d(n: int, algorithm: str = "sha256") -> Digest:
    length = {"sha256": 64, "sha384": 96, "sha512": 128}[algorithm]
    return Digest(algorithm, f"{n:0{length}x}")


CASES = {
    d(1): ManifestRefs("application/vnd.oci.image.manifest.v1+json", "image", (d(10), d(11))),
    d(2): ManifestRefs(
        "application/vnd.oci.image.index.v1+json",
        "index",
        children=(d(1), d(3, "sha512")),
        subject=d(4, "sha384"),
    ),
    d(3): ManifestRefs(
        "application/vnd.docker.distribution.manifest.v1+prettyjws", "schema1", (d(10),)
    ),
    d(4): ManifestRefs("", "unknown", (d(11), d(12)), unknown_algorithms=("md5:abc",)),
    d(5): ManifestRefs("application/vnd.oci.image.manifest.v1+json", "image"),
}


def test_round_trip_shares_digest_objects(index: Index) -> None:
    cache = index.reference_cache()
    cache.put_many(CASES)
    got = cache.get_many([*CASES, d(99)])
    assert got == CASES
    # A digest referenced by two manifests comes back as one object.
    assert got[d(1)].blobs[0] is got[d(3)].blobs[0]


def test_put_many_stores_what_put_references_of_to_dict_stores(
    index: Index, tmp_path: Path
) -> None:
    index.reference_cache().put_many(CASES)
    with open_index(str(tmp_path / "other.db")) as other:
        other.put_references({str(k): v.to_dict() for k, v in CASES.items()})
        keys = [str(k) for k in CASES]
        assert sorted(index.reference_rows(keys)) == sorted(other.reference_rows(keys))
        assert len(list(other.reference_rows(None))) == len(CASES)


def test_get_all_gives_every_entry_through_the_interner(index: Index) -> None:
    cache = index.reference_cache()
    assert cache.get_all() == {}
    cache.put_many(CASES)
    known = Digest("sha256", d(10).hex)
    interner = {known.hex: known}
    got = cache.get_all(intern=interner)
    assert got == CASES
    assert got[d(1)].blobs[0] is known  # the caller's Digest, not a copy
    assert got[d(2)].children[0] is next(k for k in got if k == d(1))
    assert set(interner) >= {x.hex for x in CASES}


def test_get_all_refuses_a_malformed_key(index: Index) -> None:
    with index.engine.begin() as conn:
        conn.execute(
            insert(ManifestReferences).values(
                digest="sha256:zz", kind="image", blobs="", children=""
            )
        )
    with pytest.raises(ValueError, match="malformed key"):
        index.reference_cache().get_all()


@pytest.mark.parametrize(
    "row",
    [
        {"kind": "bogus", "blobs": "", "children": ""},
        {"kind": "image", "blobs": f"sha256:{'A' * 64}", "children": ""},
        {"kind": "image", "blobs": f"sha256:{'a' * 63}", "children": ""},
        {"kind": "image", "blobs": f"md5:{'a' * 32}", "children": ""},
        {"kind": "index", "blobs": "", "children": f"sha256:{'a' * 64}", "subject": "nope"},
    ],
)
def test_rows_the_fast_path_refuses_fail_as_from_dict_does(
    index: Index, row: dict[str, str]
) -> None:
    key = str(d(7))
    with index.engine.begin() as conn:
        conn.execute(insert(ManifestReferences).values(digest=key, media_type="x", **row))
    entry = index.get_references([key])[key]
    with pytest.raises(Exception) as expected:
        ManifestRefs.from_dict(entry)
    with pytest.raises(type(expected.value)):
        index.reference_cache().get_many([d(7)])
    with pytest.raises(type(expected.value)):
        index.reference_cache().get_all()


_H10, _H11 = d(10).hex, d(11).hex


@pytest.mark.parametrize(
    "blobs",
    [
        f"sha256:{_H10} {_H11[:9]}sha256:{_H11[9:]}",  # a prefix inside a hex
        f"sha256:{_H10}sha256:{_H11} ",
        f" sha256:{_H10}sha256:{_H11}",
        f"sha256:{_H10} sha256:sha256:{_H11[7:]}",
        f"sha256:{_H10[:32]} sha256:{_H10[32:]}{_H11}",
    ],
)
def test_known_hexes_in_a_malformed_text_are_refused_as_from_dict_does(
    index: Index, blobs: str
) -> None:
    """The check without the regular expression takes a text only when every hex in
    it is one the mark knows: these hold known hexes, laid out wrong."""
    key = str(d(7))
    with index.engine.begin() as conn:
        conn.execute(
            insert(ManifestReferences).values(
                digest=key, media_type="x", kind="image", blobs=blobs, children=""
            )
        )
    with pytest.raises(Exception) as expected:
        ManifestRefs.from_dict(index.get_references([key])[key])
    known = {x.hex: x for x in (d(7), d(10), d(11))}
    with pytest.raises(type(expected.value)):
        index.reference_cache().get_many([d(7)], intern=known)


def test_odd_spacing_still_reads_as_from_dict_does(index: Index) -> None:
    key = str(d(8))
    blobs = f"{d(10)}  {d(11)}"  # not what put_references writes, but split() reads it
    with index.engine.begin() as conn:
        conn.execute(
            insert(ManifestReferences).values(
                digest=key, media_type=None, kind="image", blobs=blobs, children=""
            )
        )
    expected = ManifestRefs.from_dict(index.get_references([key])[key])
    assert index.reference_cache().get_many([d(8)]) == {d(8): expected}
