"""What a manifest references: every kind the registry stores, and failing closed."""

from __future__ import annotations

import json

import pytest

from layergc.digest import Digest
from layergc.errors import InvalidManifest
from layergc.storage import manifests as mt
from layergc.storage.manifests import ManifestRefs, references


def dg(n: int, algorithm: str = "sha256") -> Digest:
    return Digest.of(f"blob {n}".encode(), algorithm)


def desc(d: Digest | str, media_type: str = "application/octet-stream") -> dict[str, object]:
    return {"mediaType": media_type, "size": 10, "digest": str(d)}


def enc(doc: object) -> bytes:
    return json.dumps(doc).encode()


def image(media_type: str | None, config: Digest, layers: list[Digest], **extra: object) -> bytes:
    doc: dict[str, object] = {
        "schemaVersion": 2,
        "config": desc(config),
        "layers": [desc(layer) for layer in layers],
        **extra,
    }
    if media_type is not None:
        doc["mediaType"] = media_type
    return enc(doc)


@pytest.mark.parametrize("media_type", [mt.DOCKER_SCHEMA2, mt.OCI_MANIFEST, None])
def test_image_manifest_references_config_then_layers(media_type: str | None) -> None:
    refs = references(image(media_type, dg(0), [dg(1), dg(2), dg(1)]))
    assert refs.kind == "image"
    assert refs.media_type == (media_type or mt.OCI_MANIFEST)
    assert refs.blobs == (dg(0), dg(1), dg(2))  # in order, once each
    assert refs.children == ()
    assert refs.subject is None
    assert refs.referenced() == (dg(0), dg(1), dg(2))


@pytest.mark.parametrize("media_type", [mt.DOCKER_MANIFEST_LIST, mt.OCI_INDEX, None])
def test_index_references_its_children(media_type: str | None) -> None:
    doc: dict[str, object] = {
        "schemaVersion": 2,
        "manifests": [
            {**desc(dg(1)), "platform": {"architecture": "amd64", "os": "linux"}},
            {**desc(dg(2)), "platform": {"architecture": "arm64", "os": "linux"}},
        ],
    }
    if media_type:
        doc["mediaType"] = media_type
    refs = references(enc(doc))
    assert refs.kind == "index"
    assert refs.children == (dg(1), dg(2))
    assert refs.blobs == ()


def test_oci_referrer_names_its_subject() -> None:
    refs = references(image(mt.OCI_MANIFEST, dg(0), [dg(1)], subject=desc(dg(9))))
    assert refs.subject == dg(9)
    assert dg(9) not in refs.referenced()  # a referrer does not keep its subject


def test_oci_index_with_subject() -> None:
    doc = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [desc(dg(1))]}
    refs = references(enc({**doc, "subject": desc(dg(7))}))
    assert (refs.kind, refs.children, refs.subject) == ("index", (dg(1),), dg(7))


def test_oci_artifact_manifest() -> None:
    doc = {
        "mediaType": mt.OCI_ARTIFACT,
        "artifactType": "application/vnd.example.sbom",
        "blobs": [desc(dg(1)), desc(dg(2))],
        "subject": desc(dg(3)),
    }
    refs = references(enc(doc))
    assert refs.kind == "image"
    assert refs.blobs == (dg(1), dg(2))
    assert refs.subject == dg(3)
    # `blobs` may be left out of an artifact manifest.
    assert references(enc({"mediaType": mt.OCI_ARTIFACT, "subject": desc(dg(3))})).blobs == ()


@pytest.mark.parametrize("media_type", [mt.DOCKER_SCHEMA1_SIGNED, mt.DOCKER_SCHEMA1, None])
def test_schema1_fs_layers(media_type: str | None) -> None:
    doc: dict[str, object] = {
        "schemaVersion": 1,
        "name": "team/app",
        "tag": "v1",
        "architecture": "amd64",
        "fsLayers": [{"blobSum": str(dg(1))}, {"blobSum": str(dg(2))}, {"blobSum": str(dg(1))}],
        "history": [{"v1Compatibility": "{}"}] * 3,
        "signatures": [{"header": {"alg": "ES256"}, "signature": "x", "protected": "y"}],
    }
    if media_type:
        doc["mediaType"] = media_type
    refs = references(json.dumps(doc, indent=3).encode())
    assert refs.kind == "schema1"
    assert refs.blobs == (dg(1), dg(2))


def test_media_type_hint_only_when_the_json_has_none() -> None:
    doc = {"schemaVersion": 2, "config": desc(dg(0)), "layers": [desc(dg(1))]}
    assert references(enc(doc), mt.DOCKER_SCHEMA2).media_type == mt.DOCKER_SCHEMA2
    with_type = enc({**doc, "mediaType": mt.OCI_MANIFEST})
    assert references(with_type, mt.DOCKER_SCHEMA2).media_type == mt.OCI_MANIFEST


def test_sha384_and_sha512_references() -> None:
    refs = references(image(mt.OCI_MANIFEST, dg(0, "sha512"), [dg(1, "sha384")]))
    assert refs.blobs == (dg(0, "sha512"), dg(1, "sha384"))


# --- fail closed -----------------------------------------------------------------


def test_unknown_media_type_counts_every_descriptor_and_digest_anywhere() -> None:
    doc = {
        "mediaType": "application/vnd.example.future+json",
        "deep": {"nested": [{"digest": str(dg(1)), "size": 3}, [[{"digest": str(dg(2))}]]]},
        "note": str(dg(3)),  # a bare digest string counts too
        "blobSum": str(dg(4)),
        "text": "not a digest: sha256:xyz",
        "subject": desc(dg(5)),
    }
    refs = references(enc(doc))
    assert refs.kind == "unknown"
    assert set(refs.blobs) == {dg(1), dg(2), dg(3), dg(4), dg(5)}
    assert refs.subject == dg(5)


def test_unknown_media_type_counts_a_digest_that_is_a_key() -> None:
    doc = {"mediaType": "application/vnd.example+json", "byDigest": {str(dg(1)): {"n": 1}}}
    assert references(enc(doc)).blobs == (dg(1),)


@pytest.mark.parametrize(
    "doc",
    [
        # The Go registry reads each of these keys as the field it folds to.
        {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "config": desc(dg(1)),
         "Layers": [desc(dg(2))]},
        {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "config": desc(dg(1)),
         "layers": [], "LAYERS": [desc(dg(2))]},
        {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "config": desc(dg(1)),
         "layer\u017f": [desc(dg(2))]},  # the long s folds to s, as in Go
        {"schemaVersion": 2, "MediaType": mt.OCI_INDEX, "manifests": [desc(dg(1))]},
        {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "config": desc(dg(1)),
         "layers": [{**desc(dg(2)), "Digest": str(dg(3))}]},
        {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "config": desc(dg(1)),
         "layers": [], "Subject": desc(dg(4))},
        {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "config": desc(dg(1)),
         "layers": [], "subject": {**desc(dg(4)), "DIGEST": str(dg(5))}},
        {"mediaType": mt.OCI_ARTIFACT, "Blobs": [desc(dg(2))]},
        {"schemaVersion": 1, "mediaType": mt.DOCKER_SCHEMA1_SIGNED,
         "fsLayers": [{"blobSum": str(dg(2)), "BlobSum": str(dg(3))}]},
    ],
    ids=["Layers", "both", "long-s", "MediaType", "Digest", "Subject", "subject-DIGEST",
         "Blobs", "BlobSum"],
)  # fmt: skip
def test_a_key_go_reads_as_a_field_in_another_case_is_refused(doc: dict[str, object]) -> None:
    with pytest.raises(InvalidManifest, match="which the Go registry reads as"):
        references(enc(doc))


def test_keys_in_another_case_where_no_field_is_read_are_fine() -> None:
    layer = {**desc(dg(2)), "annotations": {"Layers": "x", "Digest": str(dg(9))}}
    doc = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "config": desc(dg(1)),
           "layers": [layer], "annotations": {"Config": "y"}}  # fmt: skip
    assert references(enc(doc)).blobs == (dg(1), dg(2))


def test_ambiguous_fields_without_media_type_are_read_as_unknown() -> None:
    doc = {"config": desc(dg(0)), "layers": [desc(dg(1))], "manifests": [desc(dg(2))]}
    refs = references(enc(doc))
    assert refs.kind == "unknown"
    assert set(refs.blobs) == {dg(0), dg(1), dg(2)}


def test_unknown_algorithms_are_kept_as_strings() -> None:
    odd = "blake3:" + "ab" * 32
    refs = references(enc({"config": desc(dg(0)), "layers": [desc(odd), desc(dg(1))]}))
    assert refs.blobs == (dg(0), dg(1))
    assert refs.unknown_algorithms == (odd,)
    unknown = references(enc({"mediaType": "x/y", "a": {"digest": odd}}))
    assert unknown.unknown_algorithms == (odd,)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not json",
        b"\xff\xfe garbage",
        b"[]",
        b'"a string"',
        b"42",
        b"null",
        b"[" * 100_000 + b"]" * 100_000,  # deeper than any parser recursion
    ],
)
def test_not_a_json_object_is_invalid(content: bytes) -> None:
    with pytest.raises(InvalidManifest):
        references(content)


@pytest.mark.parametrize(
    "doc",
    [
        {"mediaType": mt.DOCKER_SCHEMA2, "layers": []},  # no config
        {"mediaType": mt.DOCKER_SCHEMA2, "config": desc(dg(0))},  # no layers
        {"mediaType": mt.OCI_MANIFEST, "config": "sha256:00", "layers": []},
        {"mediaType": mt.OCI_MANIFEST, "config": desc(dg(0)), "layers": {"a": 1}},
        {"mediaType": mt.OCI_MANIFEST, "config": desc(dg(0)), "layers": [{"size": 1}]},
        {"mediaType": mt.OCI_MANIFEST, "config": desc(dg(0)), "layers": [desc("sha256:abc")]},
        {"mediaType": mt.OCI_MANIFEST, "config": {"digest": "SHA256:" + "A" * 64}, "layers": []},
        {"mediaType": mt.OCI_MANIFEST, "config": desc(dg(0)), "layers": [{"digest": 5}]},
        {"mediaType": mt.OCI_MANIFEST, "config": desc(dg(0)), "layers": [], "subject": "x"},
        {"mediaType": mt.OCI_INDEX},  # no manifests
        {"mediaType": mt.OCI_INDEX, "manifests": [desc("sha256:" + "g" * 64)]},
        {"mediaType": mt.DOCKER_SCHEMA1, "fsLayers": [{"blobSum": "sha256:abc"}]},
        {"mediaType": mt.DOCKER_SCHEMA1, "fsLayers": [{"digest": str(dg(1))}]},
        {"mediaType": 7, "config": desc(dg(0)), "layers": []},
        {"mediaType": "x/unknown", "layers": [{"digest": "sha256:short"}]},
    ],
)
def test_known_shapes_with_unreadable_references_are_invalid(doc: dict[str, object]) -> None:
    with pytest.raises(InvalidManifest):
        references(enc(doc))


def test_huge_manifest_is_invalid() -> None:
    layers = [dg(i) for i in range(2)]
    padding = "x" * (mt.MAX_MANIFEST_SIZE + 1)
    content = image(mt.OCI_MANIFEST, dg(0), layers, annotations={"pad": padding})
    with pytest.raises(InvalidManifest, match="larger than"):
        references(content)


def test_error_message_says_where() -> None:
    content = enc({"config": desc(dg(0)), "layers": [desc(dg(1)), desc("sha256:1")]})
    with pytest.raises(InvalidManifest, match=r"layers\[1\]\.digest"):
        references(content)


def test_intern_shares_digest_objects() -> None:
    intern: dict[str, Digest] = {}
    a = references(image(mt.OCI_MANIFEST, dg(0), [dg(1)]), intern=intern)
    b = references(image(mt.DOCKER_SCHEMA2, dg(2), [dg(1)]), intern=intern)
    assert a.blobs[1] is b.blobs[1]
    assert intern[dg(1).hex] is a.blobs[1]


def test_refs_round_trip_through_a_dict() -> None:
    refs = ManifestRefs(
        media_type=mt.OCI_INDEX,
        kind="index",
        blobs=(dg(1),),
        children=(dg(2), dg(3)),
        subject=dg(4),
        unknown_algorithms=("blake3:" + "a" * 64,),
    )
    assert ManifestRefs.from_dict(json.loads(json.dumps(refs.to_dict()))) == refs
    with pytest.raises(ValueError):
        ManifestRefs.from_dict({**refs.to_dict(), "kind": "bogus"})


def test_make_digest_is_a_plain_digest() -> None:
    d = mt.make_digest("sha256", dg(1).hex)
    assert d == dg(1) and hash(d) == hash(dg(1)) and str(d) == str(dg(1))
    assert isinstance(d, Digest)


def test_a_known_hex_under_another_algorithm_is_malformed() -> None:
    """The interner knows a sha256 digest by its hex alone: the same hex named
    sha512 (whose hex is twice as long) is still a malformed reference."""
    known = dg(1)
    intern = {known.hex: known}
    assert references(image(mt.OCI_MANIFEST, dg(0), [known]), intern=intern).blobs[1] is known
    wrong = enc({"config": desc(dg(0)), "layers": [desc(f"sha512:{known.hex}")]})
    with pytest.raises(InvalidManifest):
        references(wrong, intern=intern)
