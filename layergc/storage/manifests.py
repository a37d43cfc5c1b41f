"""What a manifest references: the one question the garbage collector asks of it.

`references(content)` reads a stored manifest and answers which blobs it needs
(config and layers, schema1 fsLayers), which manifests it points at (the
children of an index or manifest list) and which manifest it is a referrer of
(its OCI `subject`). It never fetches anything.

Fail closed: the collector deletes what no manifest references, so a wrong
answer here loses images. Hence:
- a manifest of a media type we do not know counts every descriptor-looking
  object and every digest string found anywhere in its JSON as a reference;
- a manifest of a known type whose references cannot be read (wrong shape,
  a descriptor with a malformed digest), or that is not a JSON object at all,
  or that is larger than the registry ever accepts, raises InvalidManifest:
  the caller then keeps every blob for the run;
- a reference with a well-formed digest of an algorithm the registry does not
  store (`blake3:...`) cannot name a blob we would delete (blobs are listed by
  supported algorithm only), so it is kept as a string in
  `unknown_algorithms` for the report instead of stopping the run.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any, Final, Literal, NamedTuple

from layergc.digest import ALGORITHM_OF_LENGTH, ALGORITHMS, Digest
from layergc.errors import InvalidManifest

try:  # about 1.6 times faster than json on manifests; stricter only where Go is strict too
    from orjson import loads as _json_loads
except ImportError:  # pragma: no cover - a dependency, but the parser must not need it
    _json_loads = json.loads

# The Go registry refuses manifest bodies over 4 MiB (maxManifestBodySize); a
# larger stored "manifest" was not written by it and is not parsed.
MAX_MANIFEST_SIZE = 4 << 20

DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
DOCKER_SCHEMA2 = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_ARTIFACT = "application/vnd.oci.artifact.manifest.v1+json"
# What a manifest without a mediaType field is taken for, by its fields.
INFERRED_OCI_MANIFEST = OCI_MANIFEST
INFERRED_OCI_INDEX = OCI_INDEX
INFERRED_SCHEMA1 = DOCKER_SCHEMA1

Kind = Literal["image", "index", "schema1", "unknown"]

_KINDS: dict[str, Kind] = {
    DOCKER_SCHEMA1: "schema1",
    DOCKER_SCHEMA1_SIGNED: "schema1",
    DOCKER_SCHEMA2: "image",
    OCI_MANIFEST: "image",
    OCI_ARTIFACT: "image",
    DOCKER_MANIFEST_LIST: "index",
    OCI_INDEX: "index",
}

# OCI's digest grammar: algorithm components joined by + . _ -, then the encoded part.
_DIGEST_GRAMMAR = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
# The one string object for each algorithm name, shared by every Digest made here.
_ALGORITHM_NAMES = {name: name for name in ALGORITHMS}


class ManifestRefs(NamedTuple):
    """What one manifest references. Immutable: a digest's answer never changes.
    (A NamedTuple: made by the tens of thousands in a mark, and far cheaper to
    build than a frozen dataclass.)"""

    media_type: str  # as stored, or inferred from the fields ("" when unknown and absent)
    kind: Kind
    blobs: tuple[Digest, ...] = ()  # config + layers (schema1: fsLayers), in order, unique
    children: tuple[Digest, ...] = ()  # manifests of an index / manifest list
    subject: Digest | None = None  # OCI referrers: the manifest this one is about
    unknown_algorithms: tuple[str, ...] = ()  # references the registry cannot store

    def referenced(self) -> tuple[Digest, ...]:
        """Every digest that keeping this manifest keeps (not its subject)."""
        return self.blobs + self.children

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form, for reference caches that persist answers."""
        return {
            "media_type": self.media_type,
            "kind": self.kind,
            "blobs": [str(d) for d in self.blobs],
            "children": [str(d) for d in self.children],
            "subject": str(self.subject) if self.subject else None,
            "unknown_algorithms": list(self.unknown_algorithms),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ManifestRefs:
        kind = data["kind"]
        if kind not in ("image", "index", "schema1", "unknown"):
            raise ValueError(f"unknown manifest kind {kind!r}")
        subject = data.get("subject")
        return cls(
            media_type=str(data["media_type"]),
            kind=kind,
            blobs=tuple(Digest.parse(d) for d in data.get("blobs", ())),
            children=tuple(Digest.parse(d) for d in data.get("children", ())),
            subject=Digest.parse(subject) if subject else None,
            unknown_algorithms=tuple(str(s) for s in data.get("unknown_algorithms", ())),
        )


def references(
    content: bytes,
    media_type_hint: str | None = None,
    *,
    intern: dict[str, Digest] | None = None,
) -> ManifestRefs:
    """Parse a stored manifest and say what it references.

    `media_type_hint` (say, the Content-Type it was pushed with) is used only
    when the JSON has no `mediaType` field; without either, the type is
    inferred from the fields as the Go registry does for OCI manifests.
    Raises InvalidManifest, and nothing else, when the content cannot be read.

    `intern` (hex -> Digest, filled as it goes) lets a caller parsing many
    manifests share one Digest object per digest: less memory, faster sets.
    """
    doc = _load(content)
    media_type = doc.get("mediaType")
    if media_type is None:
        media_type = media_type_hint or _infer(doc)
    elif type(media_type) is not str:
        raise InvalidManifest(f"mediaType is not a string: {_short(media_type)}")
    kind = _KINDS.get(media_type, "unknown")
    media_type = sys.intern(media_type)  # a few distinct values, held by thousands
    if intern is None:
        intern = {}
    table = _Table(intern)
    # Keyed by hex (unique across the supported algorithms: their lengths
    # differ), which hashes faster than a Digest; insertion order is kept.
    blobs: dict[str, Digest] = {}
    children: dict[str, Digest] = {}
    unknown: list[str] = []
    subject: Digest | None = None
    if kind != "unknown" and not doc.keys() <= _USUAL_KEYS:
        _refuse_case_variants(doc, "manifest")
    if kind == "unknown":
        subject = _collect_anywhere(doc, blobs, table, unknown)
    elif kind == "schema1":
        fs_layers = _descriptor_list(doc, "fsLayers", required=True)
        _collect(fs_layers, "fsLayers", blobs, table, unknown, "blobSum")
    elif kind == "index":
        manifests = _descriptor_list(doc, "manifests", required=True)
        _collect(manifests, "manifests", children, table, unknown)
        subject = _subject(doc, table, unknown)
    elif media_type == OCI_ARTIFACT:
        _collect(_descriptor_list(doc, "blobs", required=False), "blobs", blobs, table, unknown)
        subject = _subject(doc, table, unknown)
    else:  # schema2 or OCI image manifest
        config = doc.get("config")
        if config is None:
            raise InvalidManifest(f"{media_type} has no config descriptor")
        _collect([config], "config", blobs, table, unknown)
        layers = _descriptor_list(doc, "layers", required=media_type == DOCKER_SCHEMA2)
        _collect(layers, "layers", blobs, table, unknown)
        subject = _subject(doc, table, unknown)
    # _make: tuple.__new__ straight, without NamedTuple's Python-level __new__.
    return ManifestRefs._make(
        (
            media_type,
            kind,
            tuple(blobs.values()),
            tuple(children.values()),
            subject,
            tuple(dict.fromkeys(unknown)) if unknown else (),
        )
    )


def parse_reference(value: object, intern: dict[str, Digest] | None = None) -> Digest | str:
    """A descriptor's digest: a Digest, or the string itself when it is a
    well-formed digest of an algorithm the registry does not store.
    Raises InvalidManifest for anything else."""
    return _Table({} if intern is None else intern).reference(value)


# --- internals ---------------------------------------------------------------


class _Table:
    """The Digests of one parse: shared through `by_hex` (see references())."""

    __slots__ = ("by_hex",)

    def __init__(self, by_hex: dict[str, Digest]) -> None:
        self.by_hex = by_hex

    def new(self, algorithm: str, encoded: str) -> Digest | None:
        """The Digest of a well-formed supported digest (registered), else None."""
        name = _ALGORITHM_NAMES.get(algorithm)
        if name is None:
            return None
        length = ALGORITHMS[name]
        if not is_lower_hex(encoded, length):
            return None
        # One string per hex, shared with every other holder (listings, links).
        encoded = sys.intern(encoded)
        digest = self.by_hex[encoded] = make_digest(name, encoded)
        return digest

    def reference(self, value: object) -> Digest | str:
        if type(value) is str:
            algorithm, _, encoded = value.partition(":")
            digest = self.by_hex.get(encoded) or self.new(algorithm, encoded)
            if digest is not None and digest.algorithm == algorithm:
                return digest
            if _DIGEST_GRAMMAR.fullmatch(value) and algorithm not in ALGORITHMS:
                return value
        raise InvalidManifest(f"invalid digest in manifest: {_short(value)}")

    def field(self, descriptor: Any, key: str, where: str) -> Digest | str:
        """The digest in `descriptor[key]`, or InvalidManifest saying where."""
        if type(descriptor) is not dict:
            raise InvalidManifest(f"{where} is a {type(descriptor).__name__}, not a descriptor")
        if key not in descriptor:
            raise InvalidManifest(f"{where} has no {key!r}")
        try:
            return self.reference(descriptor[key])
        except InvalidManifest as exc:
            raise InvalidManifest(f"{where}.{key}: {exc}") from None


def _collect(
    items: list[Any],
    where: str,
    into: dict[str, Digest],
    table: _Table,
    unknown: list[str],
    key: str = "digest",
) -> None:
    """The digests of a list of descriptors, into `into` (unknown algorithms
    into `unknown`). The hot loop of a mark: the common case is inlined."""
    by_hex = table.by_hex
    for i, item in enumerate(items):
        if type(item) is dict:
            if not item.keys() <= _USUAL_KEYS:
                _refuse_case_variants(item, f"{where}[{i}]")
            value = item.get(key)
            if type(value) is str:
                # Fast path: a digest seen before (layers are shared), or a new
                # well-formed one.
                algorithm, _, encoded = value.partition(":")
                known = by_hex.get(encoded) or table.new(algorithm, encoded)
                if known is not None and known.algorithm == algorithm:
                    into[known.hex] = known
                    continue
        ref = table.field(item, key, f"{where}[{i}]")
        if type(ref) is str:
            unknown.append(ref)
        else:
            into[ref.hex] = ref  # type: ignore[union-attr]


def _subject(doc: dict[str, Any], table: _Table, unknown: list[str]) -> Digest | None:
    subject = doc.get("subject")
    if subject is None:
        return None
    if type(subject) is dict and not subject.keys() <= _USUAL_KEYS:
        _refuse_case_variants(subject, "subject")
    ref = table.field(subject, "digest", "subject")
    if type(ref) is str:
        unknown.append(ref)
        return None
    return ref  # type: ignore[return-value]


# Go's encoding/json matches an object's keys to a struct's fields without regard
# to case (Unicode simple folding), so the Go registry reads "Layers" as the
# layers. A key this parser would not read, but Go would read as a field it does
# (say, "Layers" beside or instead of "layers"), could hide references: such a
# manifest is refused, which stops blob deletion for the run.
_READ_FIELDS: Final = (
    "mediaType", "schemaVersion", "config", "layers", "manifests", "blobs",
    "subject", "fsLayers", "digest", "blobSum",
)  # fmt: skip
_FIELD_OF_FOLDED: Final = {name.casefold(): name for name in _READ_FIELDS}
# Keys that are no variant of a read field, as most manifests hold only these: a
# subset check in C spares the Python loop below.
_USUAL_KEYS: Final = frozenset(
    (*_READ_FIELDS, "size", "annotations", "platform", "urls", "artifactType", "data",
     "name", "tag", "architecture", "history", "signatures")
)  # fmt: skip


def _refuse_case_variants(item: dict[str, Any], where: str) -> None:
    for key in item:
        name = _FIELD_OF_FOLDED.get(key.casefold()) if type(key) is str else None
        if name is not None and key != name:
            raise InvalidManifest(
                f"{where} has a key {key[:80]!r}, which the Go registry reads as "
                f"{name!r}: what it references cannot be known"
            )


def _load(content: bytes) -> dict[str, Any]:
    if not isinstance(content, bytes | bytearray | memoryview):
        raise InvalidManifest(f"manifest content is {type(content).__name__}, not bytes")
    if len(content) > MAX_MANIFEST_SIZE:
        raise InvalidManifest(
            f"manifest is larger than the registry's limit of {MAX_MANIFEST_SIZE} bytes"
        )
    try:
        doc = _json_loads(content if type(content) is bytes else bytes(content))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, deep nesting
        raise InvalidManifest(f"manifest is not valid JSON: {_short(str(exc))}") from None
    if not isinstance(doc, dict):
        raise InvalidManifest(f"manifest is a JSON {type(doc).__name__}, not an object")
    return doc


def _infer(doc: dict[str, Any]) -> str:
    """The media type of a manifest without `mediaType` (OCI allows leaving it out)."""
    has_manifests = "manifests" in doc
    has_image = "config" in doc and "layers" in doc
    if has_manifests and not has_image:
        return INFERRED_OCI_INDEX
    if has_image and not has_manifests:
        return INFERRED_OCI_MANIFEST
    if doc.get("schemaVersion") == 1 and "fsLayers" in doc and not (has_manifests or has_image):
        return INFERRED_SCHEMA1
    return ""  # ambiguous or unrecognised: read as an unknown type, all references count


def _descriptor_list(doc: dict[str, Any], key: str, *, required: bool) -> list[Any]:
    items = doc.get(key)
    if items is None and not required:
        return []
    if not isinstance(items, list):
        what = "missing" if items is None else f"a {type(items).__name__}"
        raise InvalidManifest(f"manifest field {key!r} is {what}, not a list")
    return items


def _collect_anywhere(
    doc: dict[str, Any], into: dict[str, Digest], table: _Table, unknown: list[str]
) -> Digest | None:
    """Unknown media type: every descriptor and every digest string counts.
    Returns the subject, which is kept too (we do not know what it is to this)."""
    subject = None
    if type(doc.get("subject")) is dict and "digest" in doc["subject"]:
        subject = _subject(doc, table, unknown)
    for key, value in _walk(doc):
        if type(value) is not str:
            continue
        if key in ("digest", "blobSum"):
            # A descriptor: its digest must be readable, or we cannot know what it keeps.
            ref = table.field({key: value}, key, "descriptor")
        else:
            try:
                ref = table.reference(value)
            except InvalidManifest:
                continue  # ordinary text
            if type(ref) is str:
                continue  # an unknown-algorithm lookalike in free text is not reported
        if type(ref) is str:
            unknown.append(ref)
        else:
            into[ref.hex] = ref  # type: ignore[union-attr]
    if subject is not None:
        into[subject.hex] = subject
    return subject


def _walk(doc: Any) -> Iterator[tuple[str | None, Any]]:
    """(key, value) of every value in a JSON document, and (None, key) of every
    object key (a digest may be a key: a map by digest), iteratively (no recursion
    limit)."""
    stack: list[tuple[str | None, Any]] = [(None, doc)]
    while stack:
        key, value = stack.pop()
        yield key, value
        if isinstance(value, dict):
            stack.extend((None, k) for k in value)
            stack.extend(value.items())
        elif isinstance(value, list):
            stack.extend((None, item) for item in value)


def _digest_maker() -> Callable[[str, str], Digest]:
    """A Digest constructor for an algorithm and hex already validated.

    A mark makes ~100,000 Digests and the frozen dataclass's __init__ costs
    five times what setting its two slots directly does. Digest has no
    validation in __init__ (Digest.parse validates), so nothing is skipped;
    should Digest stop being a slots class, this falls back to calling it."""
    try:
        set_algorithm = Digest.__dict__["algorithm"].__set__
        set_hex = Digest.__dict__["hex"].__set__
    except (KeyError, AttributeError):  # pragma: no cover - Digest changed shape
        return Digest
    new = object.__new__

    def make(algorithm: str, hex_: str) -> Digest:
        digest = new(Digest)
        set_algorithm(digest, algorithm)
        set_hex(digest, hex_)
        return digest

    return make


make_digest = _digest_maker()


def interned_digest(by_hex: dict[str, Digest], hex_: str) -> Digest:
    """The one Digest `by_hex` holds for a well-formed hex (its length names its
    algorithm), made and entered if there is none yet."""
    d = by_hex.get(hex_)
    if d is None:
        d = by_hex[hex_] = make_digest(ALGORITHM_OF_LENGTH[len(hex_)], hex_)
    return d


def is_lower_hex(text: str, length: int) -> bool:
    """`length` lowercase hex digits? (bytes.fromhex runs in C; the round trip
    refuses the uppercase and spaces that fromhex alone accepts)."""
    if len(text) != length:
        return False
    try:
        return bytes.fromhex(text).hex() == text
    except ValueError:
        return False


def _short(value: object, limit: int = 120) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
