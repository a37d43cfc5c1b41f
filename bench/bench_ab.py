"""Interleaved A/B of `layergc sweep --dry-run` (run by hand, not a test): the working
tree against an earlier commit, on one bench tree, with each round running the two in
turn and alternating which goes first.

    python bench/bench_ab.py HEAD --case repeat --rounds 12 --workdir /tmp/bench

On a shared host the wall time of one run moves by 10 to 20% from run to run (see
bench/README.md). A change worth 3% shows only in the medians of many rounds taken
side by side, and in the phase times of the JSON report (`seconds`). Those leave out
the imports and the noise of everything else.

- `--case first`: each run on a new SQLite index (the reference cache is empty);
  `--case repeat`: each version keeps its own index, filled by one untimed run.
- The earlier commit is checked out with `git worktree` into a temporary folder, and
  each version runs as `python -m layergc.cli` from its own sources, compiled to
  bytecode first (as bench_sweep.py does, for the same reason).
- Every run must succeed, and the two versions must report the same blobs, uploads
  and errors; otherwise the comparison stops.

The table gives, for each version, the median and the minimum of the wall time, the
median CPU time (user + system, this run's whole process tree) and the median of each
phase of the report's `seconds`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sweep import ROOT, compile_layergc, ensure_tree, remove_index

# What both versions must agree on, run after run.
_SAME = ("blobs", "uploads", "errors", "bytes_reclaimable")


@dataclass
class Version:
    name: str
    source: Path  # the folder holding the layergc package
    db: Path
    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)
    phases: list[dict[str, float]] = field(default_factory=list)

    def run(self, tree_root: Path, *, fresh_index: bool, record: bool = True) -> dict[str, Any]:
        """One dry run; its report. Wall and CPU time are recorded, with `record`."""
        if fresh_index:
            remove_index(self.db)
        cmd = [sys.executable, "-m", "layergc.cli", "sweep", "--root", str(tree_root)]
        cmd += ["--db", str(self.db), "--dry-run", "--grace", "0s", "--json"]
        env = {**os.environ, "PYTHONPATH": str(self.source)}
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done = subprocess.run(cmd, env=env, capture_output=True, cwd=tempfile.gettempdir())
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            raise SystemExit(f"{self.name}: exit {done.returncode}: {done.stderr[-2000:]!r}")
        report: dict[str, Any] = json.loads(done.stdout)
        if not record:
            return report
        self.walls.append(wall)
        self.cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        self.phases.append(report["seconds"])
        return report

    def row(self) -> str:
        phases = {k: statistics.median(p[k] for p in self.phases) for k in self.phases[0]}
        return (
            f"| {self.name} | {statistics.median(self.walls):.3f} | {min(self.walls):.3f} | "
            f"{statistics.median(self.cpus):.3f} | "
            + " ".join(f"{k}={v:.3f}" for k, v in phases.items())
            + " |"
        )


def checkout(commit: str, into: Path) -> None:
    """`commit`'s tree in `into`, a detached git worktree."""
    subprocess.run(
        ["git", "worktree", "add", "--detach", "--force", str(into), commit],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", help="the commit to compare the working tree against")
    parser.add_argument("--case", choices=("first", "repeat"), default="repeat")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--blobs", type=int, default=100_000, help="the bench tree's size")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", default="/tmp/layergc-bench", help="trees are kept here")
    args = parser.parse_args()

    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    tree = ensure_tree(workdir, args.blobs, args.seed)
    fresh = args.case == "first"
    with tempfile.TemporaryDirectory(prefix="layergc-ab-") as tmp:
        base_tree = Path(tmp) / "base"
        checkout(args.base, base_tree)
        try:
            versions = [
                Version(f"base {args.base}", base_tree, Path(tmp) / "base.db"),
                Version("working tree", ROOT, Path(tmp) / "work.db"),
            ]
            for v in versions:
                compile_layergc(v.source / "layergc")
                if not fresh:
                    v.run(tree.root, fresh_index=True, record=False)  # the index to repeat over
            for i in range(args.rounds):
                reports = {}
                for v in versions if i % 2 == 0 else versions[::-1]:
                    reports[v.name] = v.run(tree.root, fresh_index=fresh)
                base_report, work_report = (reports[v.name] for v in versions)
                for key in _SAME:
                    if base_report[key] != work_report[key]:
                        raise SystemExit(f"round {i + 1}: the versions disagree on {key!r}")
                print(f"round {i + 1}/{args.rounds} done", file=sys.stderr, flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base_tree)], cwd=ROOT)
            subprocess.run(["git", "worktree", "prune"], cwd=ROOT)
    print(f"{args.case} dry runs, {tree.blobs:,} blobs, {args.rounds} interleaved rounds")
    print("| version | wall median s | wall min s | CPU median s | phases, medians (s) |")
    print("|---|---:|---:|---:|---|")
    for v in versions:
        print(v.row())


if __name__ == "__main__":
    main()
