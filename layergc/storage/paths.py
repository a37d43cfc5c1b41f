"""The Go registry's storage layout, documented and built in this one place.

Everything lives under `<rootdirectory>/docker/registry/v2/` (the driver's root
is the rootdirectory, so driver paths start with `/docker/registry/v2`):

    blobs/<alg>/<first 2 hex>/<hex>/data                      blob content
    repositories/<name>/_layers/<alg>/<hex>/link              layer link
    repositories/<name>/_manifests/revisions/<alg>/<hex>/link manifest revision
    repositories/<name>/_manifests/tags/<tag>/current/link    tag -> manifest
    repositories/<name>/_manifests/tags/<tag>/index/<alg>/<hex>/link   tag history
    repositories/<name>/_uploads/<uuid>/data                  upload content
    repositories/<name>/_uploads/<uuid>/startedat             RFC 3339, UTC, seconds
    repositories/<name>/_uploads/<uuid>/hashstates/<alg>/<offset>   Go hash state

A link file holds the digest string (`sha256:<hex>`) with no newline. A
repository is a folder under `repositories/` holding `_manifests`, `_layers`
or `_uploads`; names nest (`team/app/api`), and a repository may sit beside
its own sub-repositories. Deleting a manifest over the HTTP API removes only
the revision `link` (its folder stays) and the tags pointing at it.

layergc's own state sits beside the registry's, outside its view:

    <rootdirectory>/layergc/quarantine/<run>/...   blobs and links being deleted
"""

from __future__ import annotations

from layergc.digest import Digest

V2 = "/docker/registry/v2"
BLOBS = f"{V2}/blobs"
REPOSITORIES = f"{V2}/repositories"
QUARANTINE = "/layergc/quarantine"

LAYERS_DIR = "_layers"
MANIFESTS_DIR = "_manifests"
UPLOADS_DIR = "_uploads"
REPOSITORY_MARKERS = frozenset({LAYERS_DIR, MANIFESTS_DIR, UPLOADS_DIR})


# --- blobs -------------------------------------------------------------------


def blob_algorithm_dir(algorithm: str) -> str:
    return f"{BLOBS}/{algorithm}"


def blob_dir(digest: Digest) -> str:
    return f"{BLOBS}/{digest.algorithm}/{digest.hex[:2]}/{digest.hex}"


def blob_data(digest: Digest) -> str:
    return f"{blob_dir(digest)}/data"


# --- repositories --------------------------------------------------------------


def repository_dir(name: str) -> str:
    return f"{REPOSITORIES}/{name}"


def layers_dir(name: str, algorithm: str | None = None) -> str:
    base = f"{REPOSITORIES}/{name}/{LAYERS_DIR}"
    return f"{base}/{algorithm}" if algorithm else base


def layer_link_dir(name: str, digest: Digest) -> str:
    return f"{layers_dir(name, digest.algorithm)}/{digest.hex}"


def layer_link(name: str, digest: Digest) -> str:
    return f"{layer_link_dir(name, digest)}/link"


def manifests_dir(name: str) -> str:
    return f"{REPOSITORIES}/{name}/{MANIFESTS_DIR}"


def manifest_revisions_dir(name: str, algorithm: str | None = None) -> str:
    base = f"{manifests_dir(name)}/revisions"
    return f"{base}/{algorithm}" if algorithm else base


def manifest_revision_dir(name: str, digest: Digest) -> str:
    return f"{manifest_revisions_dir(name, digest.algorithm)}/{digest.hex}"


def manifest_revision_link(name: str, digest: Digest) -> str:
    return f"{manifest_revision_dir(name, digest)}/link"


def tags_dir(name: str) -> str:
    return f"{manifests_dir(name)}/tags"


def tag_dir(name: str, tag: str) -> str:
    return f"{tags_dir(name)}/{tag}"


def tag_current_link(name: str, tag: str) -> str:
    return f"{tag_dir(name, tag)}/current/link"


def tag_index_dir(name: str, tag: str) -> str:
    return f"{tag_dir(name, tag)}/index"


def tag_index_link(name: str, tag: str, digest: Digest) -> str:
    return f"{tag_index_dir(name, tag)}/{digest.algorithm}/{digest.hex}/link"


# --- uploads -----------------------------------------------------------------


def uploads_dir(name: str) -> str:
    return f"{REPOSITORIES}/{name}/{UPLOADS_DIR}"


def upload_dir(name: str, uuid: str) -> str:
    return f"{uploads_dir(name)}/{uuid}"


def upload_data(name: str, uuid: str) -> str:
    return f"{upload_dir(name, uuid)}/data"


def upload_started_at(name: str, uuid: str) -> str:
    return f"{upload_dir(name, uuid)}/startedat"


def upload_hashstates_dir(name: str, uuid: str, algorithm: str) -> str:
    return f"{upload_dir(name, uuid)}/hashstates/{algorithm}"


def upload_hashstate(name: str, uuid: str, algorithm: str, offset: int) -> str:
    return f"{upload_hashstates_dir(name, uuid, algorithm)}/{offset}"


# --- layergc's own state -----------------------------------------------------


def quarantine_dir(run_id: int) -> str:
    return f"{QUARANTINE}/{run_id}"


def quarantined(run_id: int, path: str) -> str:
    """Where `path` (a driver path under the registry's root) goes in quarantine."""
    return f"{quarantine_dir(run_id)}{path}"
