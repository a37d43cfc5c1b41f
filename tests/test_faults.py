"""Faults from storage: the sweep under FaultInjectingDriver (errors, timeouts
and cut listings on a seeded fraction of calls).

For every seed and rate: the run reports what failed (errors, status
"failed", `layergc sweep` exit 1), deletes nothing that one intact sweep of the
same tree keeps (the expectation), and the next clean run finishes the work
(storage equals the expectation, nothing left in quarantine).

And the safety property behind it, fail closed: a listing or read error while
enumerating repositories, revisions, tags, layer links or manifests blocks
every blob deletion (and untagged-manifest deletion) for that run.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from layergc.driver.base import StorageDriver
from layergc.driver.faults import (
    ERROR,
    PARTIAL,
    READ_OPERATIONS,
    TIMEOUT,
    WRITE_OPERATIONS,
    FaultInjectingDriver,
)
from layergc.driver.inmemory import InMemoryDriver
from layergc.gc.db import open_index
from layergc.gc.sweep import DELETED, Report, Sweeper, SweepOptions
from layergc.gc.treegen import TreeSummary, generate
from layergc.storage import paths
from tests.support.damage import (
    PathFaults,
    Snapshot,
    diff,
    missing_or_changed,
    quarantined_files,
    snapshot,
)

BLOBS = 200
SEED = 4242
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
OPTIONS = SweepOptions(grace=timedelta(0), settle=timedelta(0), workers=4)
UNTAGGED = SweepOptions(grace=timedelta(0), settle=timedelta(0), workers=4, delete_untagged=True)

FIGURES: Counter[str] = Counter()


def make_tree() -> tuple[InMemoryDriver, TreeSummary]:
    driver = InMemoryDriver()
    return driver, generate(driver, BLOBS, SEED, now=NOW, direct=False)


@pytest.fixture
def index(tmp_path: Path) -> Iterator[Any]:
    with open_index(f"sqlite:///{tmp_path}/index.db") as idx:
        yield idx


@pytest.fixture(scope="module")
def expected(tmp_path_factory: pytest.TempPathFactory) -> dict[bool, Snapshot]:
    """The tree after one intact sweep, without and with --delete-untagged."""
    out = {}
    for untagged in (False, True):
        driver, _ = make_tree()
        db = tmp_path_factory.mktemp("expected") / "index.db"
        with open_index(f"sqlite:///{db}") as idx:
            report = Sweeper(driver, idx, UNTAGGED if untagged else OPTIONS).run()
        assert report.status == "succeeded" and not report.errors, report.errors
        assert sum(1 for b in report.blobs if b["action"] == DELETED) >= 10
        out[untagged] = snapshot(driver)
    return out


@pytest.fixture(scope="module", autouse=True)
def figures() -> Iterator[None]:
    yield
    print(f"\nfault figures: {dict(sorted(FIGURES.items()))}, images lost: 0")


# --- random faults ----------------------------------------------------------------------

# Faults on every operation mostly hit the mark (most calls are its reads), which
# then blocks deletion; faults on writes only, or on stat only, let the mark
# finish and hit the delete protocol itself (quarantine moves, purges, restores,
# upload deletes) or the sweep's own checks (candidate ages, upload ages).
# Odd seeds sweep with --delete-untagged.
SCOPES = {
    "all": READ_OPERATIONS | WRITE_OPERATIONS,
    "writes": WRITE_OPERATIONS,
    "delete": {"delete"},
    "stat": {"stat"},
}
CASES = [
    *(("all", rate, seed) for rate in (0.02, 0.05, 0.1, 0.2) for seed in (0, 1)),
    *(("writes", rate, seed) for rate, seed in ((0.05, 0), (0.05, 1), (0.2, 2))),
    *(("delete", 0.1, seed) for seed in (0, 1, 2)),
    *(("stat", 0.1, seed) for seed in (0, 1)),
]


@pytest.mark.parametrize(
    ("scope", "rate", "seed"), CASES, ids=[f"{c}-rate{r}-seed{s}" for c, r, s in CASES]
)
def test_random_faults_fail_safe_and_next_run_finishes(
    scope: str, rate: float, seed: int, expected: dict[bool, Snapshot], index: Any
) -> None:
    untagged = seed % 2 == 1
    driver, _ = make_tree()
    before = snapshot(driver)
    faulty = FaultInjectingDriver(
        driver, rate, seed=seed, kinds=(ERROR, TIMEOUT, PARTIAL), operations=SCOPES[scope]
    )
    options = UNTAGGED if untagged else OPTIONS
    report = Sweeper(faulty, index, options).run()
    FIGURES["runs"] += 1
    FIGURES["faults"] += faulty.faults
    for kind, n in faulty.injected.items():
        FIGURES[f"faults-{kind}"] += n
    intact = expected[untagged]
    after = snapshot(driver)

    lost = missing_or_changed(intact, after)
    assert not lost, f"a faulty run deleted what an intact sweep keeps: {lost[:10]}"
    assert set(after) <= set(before), "a faulty run must not create files"
    if faulty.faults:
        assert report.errors, f"{faulty.faults} faults injected, none reported"
        assert report.status == "failed"
        FIGURES["failed-runs"] += 1
    assert all("kind" in e and "message" in e for e in report.errors)
    FIGURES["deleted-despite-faults"] += sum(1 for b in report.blobs if b["action"] == DELETED)

    clean = Sweeper(driver, index, options).run()
    assert clean.status == "succeeded" and not clean.errors, clean.errors
    final = snapshot(driver)
    assert final == intact, diff(intact, final)
    assert not quarantined_files(driver)


def test_faulty_cli_run_exits_1_then_clean_run_exits_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, expected: dict[bool, Snapshot]
) -> None:
    """`layergc sweep` over a faulty filesystem store exits 1 with the errors in
    its JSON; the same command over the healthy store then exits 0. (The tree is
    the in-memory one written to disk: same seed, same clock, same files.)"""
    import layergc.gc.run as run_module
    from layergc.cli import main
    from layergc.driver.filesystem import FilesystemDriver

    root = tmp_path / "root"
    generate(FilesystemDriver(root), BLOBS, SEED, now=NOW)
    real_make_driver = run_module.make_driver
    wrapped: list[FaultInjectingDriver] = []

    def faulty_driver(settings: Any) -> StorageDriver:
        driver = FaultInjectingDriver(real_make_driver(settings), 0.05, seed=7)
        wrapped.append(driver)
        return driver

    args = ["sweep", "--root", str(root), "--db", f"sqlite:///{tmp_path}/i.db"]
    args += ["--grace", "0s", "--settle", "0s", "--json"]
    monkeypatch.setattr(run_module, "make_driver", faulty_driver)
    code, report = _cli(main, args)
    assert wrapped and wrapped[0].faults > 0
    FIGURES["faults"] += wrapped[0].faults
    assert code == 1
    assert report["status"] == "failed" and report["errors"]
    lost = missing_or_changed(expected[False], snapshot(FilesystemDriver(root)))
    assert not lost, lost[:10]

    monkeypatch.setattr(run_module, "make_driver", real_make_driver)
    code, report = _cli(main, args)
    assert code == 0 and not report["errors"], report["errors"]
    final = snapshot(FilesystemDriver(root))
    assert final == expected[False], diff(expected[False], final)


def _cli(main: Any, args: list[str]) -> tuple[int, dict[str, Any]]:
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    _drop_cli_log_handler()
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert lines, result.output[-2000:]
    return result.exit_code, json.loads(lines[-1])


def _drop_cli_log_handler() -> None:
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == "layergc"]:
        root.removeHandler(handler)


# --- fail closed: a blind spot in the enumeration blocks blob deletion -------------------


def _first_repo(summary: TreeSummary) -> str:
    return next(r for r in summary.repositories if "/" in r)


def _tagged(summary: TreeSummary) -> tuple[str, str]:
    repo, digest, _ = next(m for m in summary.manifests if m[2] and "/" in m[0])
    return repo, str(digest)


def blind_spot(where: str, s: TreeSummary) -> tuple[set[str], Callable[[str], bool]]:
    """The operations and paths that fail, for each place the mark must read."""
    repo = _first_repo(s)
    tagged_repo, tagged = _tagged(s)
    hex_ = tagged.split(":")[1]
    spots: dict[str, tuple[set[str], Callable[[str], bool]]] = {
        "repositories-root": ({"list_entries"}, lambda p: p == paths.REPOSITORIES),
        "repository-namespace": (
            {"list_entries"},
            lambda p: p == f"{paths.REPOSITORIES}/{repo.split('/')[0]}",
        ),
        "revisions": (
            {"list_entries"},
            lambda p: p == paths.manifest_revisions_dir(repo, "sha256"),
        ),
        "tags": ({"list_entries"}, lambda p: p == paths.tags_dir(repo)),
        "layer-links": ({"list_entries"}, lambda p: p == paths.layers_dir(repo, "sha256")),
        "revision-link": (
            {"get_content"},
            lambda p: p.startswith(paths.manifest_revisions_dir(tagged_repo)) and hex_ in p,
        ),
        "tag-link": (
            {"get_content"},
            lambda p: p.startswith(paths.tags_dir(tagged_repo)) and p.endswith("current/link"),
        ),
        "manifest-blob": (
            {"get_content", "reader"},
            lambda p: p.startswith(paths.BLOBS) and hex_ in p,
        ),
    }
    return spots[where]


BLIND_SPOTS = (
    "repositories-root",
    "repository-namespace",
    "revisions",
    "tags",
    "layer-links",
    "revision-link",
    "tag-link",
    "manifest-blob",
)


@pytest.mark.parametrize("untagged", [False, True], ids=["plain", "untagged"])
@pytest.mark.parametrize("where", BLIND_SPOTS)
def test_enumeration_error_blocks_blob_deletion(where: str, untagged: bool, index: Any) -> None:
    driver, summary = make_tree()
    before = snapshot(driver)
    operations, match = blind_spot(where, summary)
    faulty = PathFaults(driver, operations, match)
    report: Report = Sweeper(faulty, index, UNTAGGED if untagged else OPTIONS).run()
    FIGURES["blind-spots"] += 1
    assert faulty.faults >= 1, f"the fault for {where} never fired"
    assert report.blob_deletion_blocked
    assert report.status == "failed" and report.errors
    after = snapshot(driver)
    gone = sorted(set(before) - set(after))
    assert not [
        p for p in gone if not p.startswith(f"{paths.REPOSITORIES}/") or "/_uploads/" not in p
    ]
    assert all(b["action"] != DELETED for b in report.blobs)
    assert all(m["action"] != DELETED for m in report.manifests)
    # Stale uploads are still purged: only blob and manifest deletion is blocked.
    assert any(u["action"] == DELETED for u in report.uploads) or where in (
        "repositories-root",
        "repository-namespace",
    )
