"""Property tests: the manifest parser and the link reader fail only as documented."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from layergc.digest import ALGORITHMS, Digest
from layergc.errors import InvalidLink, InvalidManifest
from layergc.storage import manifests as mt
from layergc.storage.links import parse_link
from layergc.storage.manifests import references

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

digests = st.builds(
    lambda alg, data: Digest.of(data, alg), st.sampled_from(sorted(ALGORITHMS)), st.binary()
)
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=80)
digest_strings = digests.map(str)
json_values = st.recursive(
    json_scalars | digest_strings,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(
            st.sampled_from(
                ["digest", "mediaType", "manifests", "config", "layers", "x", "subject"]
            )
            | st.text(max_size=10),
            inner,
            max_size=5,
        )
    ),
    max_leaves=12,
)


def _parse(content: bytes) -> None:
    try:
        references(content)
    except InvalidManifest:
        pass


@FUZZ
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_raise_only_invalid_manifest(content: bytes) -> None:
    _parse(content)


@FUZZ
@given(json_values)
def test_arbitrary_json_raises_only_invalid_manifest(doc: Any) -> None:
    _parse(json.dumps(doc).encode())


@settings(FUZZ, max_examples=60)
@given(
    st.dictionaries(
        st.sampled_from(["mediaType", "config", "layers", "manifests", "fsLayers", "subject"]),
        json_values,
        max_size=6,
    ),
    st.sampled_from([*sorted(mt._KINDS), ""]),
)
def test_known_media_types_with_arbitrary_fields(doc: dict[str, Any], media_type: str) -> None:
    if media_type:
        doc["mediaType"] = media_type
    _parse(json.dumps(doc).encode())


def _descriptor(d: Digest) -> dict[str, Any]:
    return {"mediaType": "application/octet-stream", "size": 1, "digest": str(d)}


@FUZZ
@given(
    st.sampled_from([mt.DOCKER_SCHEMA2, mt.OCI_MANIFEST, None]),
    digests,
    st.lists(digests, max_size=12),
    st.one_of(st.none(), digests),
    st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=3),
)
def test_image_manifest_finds_all_its_descriptors(
    media_type: str | None,
    config: Digest,
    layers: list[Digest],
    subject: Digest | None,
    annotations: dict[str, str],
) -> None:
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "config": _descriptor(config),
        "layers": [_descriptor(d) for d in layers],
        "annotations": annotations,
    }
    if media_type:
        doc["mediaType"] = media_type
    if subject is not None:
        doc["subject"] = _descriptor(subject)
    refs = references(json.dumps(doc, indent=2).encode())
    assert list(refs.blobs) == list(dict.fromkeys([config, *layers]))
    assert refs.subject == subject


@FUZZ
@given(
    st.sampled_from([mt.DOCKER_MANIFEST_LIST, mt.OCI_INDEX, None]),
    st.lists(digests, min_size=0, max_size=8),
)
def test_index_finds_all_its_children(media_type: str | None, children: list[Digest]) -> None:
    doc: dict[str, Any] = {"schemaVersion": 2, "manifests": [_descriptor(d) for d in children]}
    if media_type:
        doc["mediaType"] = media_type
    refs = references(json.dumps(doc).encode())
    assert list(refs.children) == list(dict.fromkeys(children))


@FUZZ
@given(st.text(max_size=30).filter(lambda t: "/" not in t), json_values, st.lists(digests))
def test_unknown_type_finds_every_embedded_descriptor(
    media_type: str, noise: Any, hidden: list[Digest]
) -> None:
    if media_type in mt._KINDS:
        return
    doc = {"mediaType": media_type, "noise": noise, "deep": [[{"digest": str(d)}] for d in hidden]}
    try:
        refs = references(json.dumps(doc).encode())
    except InvalidManifest:
        return  # the noise held a malformed descriptor: failing is the safe answer
    assert set(hidden) <= set(refs.blobs)


@FUZZ
@given(st.binary(max_size=300))
def test_link_reader_raises_only_invalid_link(content: bytes) -> None:
    try:
        d = parse_link("/x/link", content)
    except InvalidLink:
        return
    assert str(d) == content.decode("ascii").strip()


@FUZZ
@given(digests, st.sampled_from(["", "\n", " ", "\r\n"]))
def test_link_reader_reads_what_the_registry_writes(d: Digest, tail: str) -> None:
    assert parse_link("/x/link", (str(d) + tail).encode()) == d
