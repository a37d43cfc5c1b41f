"""Sweep benchmark (run by hand, not a test): `layergc sweep --dry-run` against the
Go registry's collector, a bare walk of the tree and a minimal Python scan.

    python bench/bench_sweep.py --sizes 2000,20000,100000 --workdir /tmp/bench

For each size, a registry tree in the Go layout is written once by
layergc.gc.treegen (repositories of 50 blobs, manifests of 3 to 8 shared
layers, 20% untagged manifests, 10% orphan blobs, a few hundred uploads) and
kept in `--workdir` for later runs (`tree-<N>-s<seed>/`, with its summary in
`tree-<N>-s<seed>.json`). Then, in the same run, each of these is a child
process measured with wait4(2) (wall time, CPU time, peak RSS of that child):

- go:       docker-registry garbage-collect --dry-run <config.yml>
- find:     find ROOT -type f
- minimal:  a minimal Python scan (this file, --minimal-scan): lists the blob
            store, reads every revision link and every manifest once, prints
            the unreferenced count; interpreter start-up included
- first:    layergc sweep --dry-run --grace 0s --json, on an empty index
- repeat:   the same again over the unchanged tree, with the index kept

Warm page cache: each command runs once untimed, then `--repeat` times (median
kept). Cold page cache (`--cold`, default on when possible): `sync` and
`echo 3 > /proc/sys/vm/drop_caches` before each of `--cold-repeat` runs; it
needs root, and the table says so when it could not be done. Every run's
output is checked against the tree's known garbage (a mismatch is flagged).

CPU time is printed beside wall time: on a shared machine the wall clock of
every row stretches with the load (the load average is printed per size), and
CPU time shows what each program itself costs.

`--profile` then breaks the layergc dry run at the largest size down by phase
(imports, mark phases, index reads and writes, candidate stats, report and
JSON output), in a child process that wraps those functions with timers, and
`--cprofile DIR` also writes cProfile dumps there and prints their top entries.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20
GO_BINARY = "docker-registry"
DROP_CACHES = "/proc/sys/vm/drop_caches"
GNU_TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None
# Targets at 100,000 blobs (issue 3): ratios to the Go registry's dry run, and memory.
TARGETS = {"first": 0.35, "repeat": 0.25}
RSS_TARGET_MIB = 100
CASES = ("go", "find", "minimal", "first", "repeat")


# --- the minimal scan (runs in its own interpreter) ----------------------------------


def minimal_scan(root: str) -> int:
    """What a mark cannot do without: the blob listing, every revision link and
    every manifest it names (read and parsed once). Returns how many blobs no
    manifest references. No tags, no layer links, no uploads, no validation."""
    v2 = os.path.join(root, "docker", "registry", "v2")
    blobs_dir = os.path.join(v2, "blobs", "sha256")
    listed: list[str] = []
    for prefix in os.listdir(blobs_dir):
        listed.extend(os.listdir(os.path.join(blobs_dir, prefix)))
    revisions: set[str] = set()
    stack = [os.path.join(v2, "repositories")]
    while stack:
        folder = stack.pop()
        with os.scandir(folder) as it:
            names = [e.name for e in it if e.is_dir(follow_symlinks=False)]
        for name in names:
            if name == "_manifests":
                base = os.path.join(folder, name, "revisions", "sha256")
                for hex_ in os.listdir(base) if os.path.isdir(base) else ():
                    try:
                        with open(os.path.join(base, hex_, "link"), "rb") as f:
                            revisions.add(f.read().decode().partition(":")[2])
                    except FileNotFoundError:
                        pass
            elif not name.startswith("_"):
                stack.append(os.path.join(folder, name))
    marked: set[str] = set()
    todo = list(revisions)
    while todo:
        hex_ = todo.pop()
        if hex_ in marked:
            continue
        marked.add(hex_)
        try:
            with open(os.path.join(blobs_dir, hex_[:2], hex_, "data"), "rb") as f:
                doc = json.loads(f.read())
        except FileNotFoundError:
            continue
        for d in [doc.get("config") or {}, *doc.get("layers", ())]:
            marked.add(d.get("digest", "").partition(":")[2])
        todo.extend(d["digest"].partition(":")[2] for d in doc.get("manifests", ()))
    return sum(1 for h in listed if h not in marked)


# --- running and measuring children ---------------------------------------------------


@dataclass
class Sample:
    wall: float
    cpu: float
    rss_mib: float
    ok: bool
    note: str = ""


@dataclass
class Result:
    case: str
    warm: list[Sample] = field(default_factory=list)
    cold: list[Sample] = field(default_factory=list)
    pss_mib: float | None = None  # peak over the whole process tree (peak_tree_pss)

    def median(self, which: str, attr: str) -> float | None:
        samples = getattr(self, which)
        return statistics.median(getattr(s, attr) for s in samples) if samples else None

    def ok(self) -> bool:
        return all(s.ok for s in self.warm + self.cold)


def measure(cmd: list[str], stdout: Path, env: dict[str, str] | None = None) -> Sample:
    """Run `cmd` as a child and measure exactly that child.

    Through GNU time when it is installed: a child forked straight from this
    process would count this process's own RSS at the fork in its peak (Linux
    keeps the high-water mark across exec), and this one holds whole reports."""
    usage_file = stdout.with_suffix(".rusage")
    timed = [GNU_TIME, "-f", "%U %S %M", "-o", str(usage_file), *cmd] if GNU_TIME else cmd
    with stdout.open("wb") as out, stdout.with_suffix(".err").open("wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(timed, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    cpu, rss_kib = usage.ru_utime + usage.ru_stime, usage.ru_maxrss
    if GNU_TIME:
        # The last line: GNU time writes "Command exited with non-zero status" first.
        user, system, rss = usage_file.read_text().split("\n")[-2].split()
        cpu, rss_kib = float(user) + float(system), int(rss)
    return Sample(
        wall=wall,
        cpu=cpu,
        rss_mib=rss_kib / 1024,
        ok=proc.returncode == 0,
        note="" if proc.returncode == 0 else f"exit {proc.returncode}",
    )


def tree_pss_kib(pid: int) -> int:
    """Proportional set size of process `pid` and all its descendants, in KiB: the
    physical memory the tree uses, shared pages counted once in all (a forked
    mark child shares most of its parent's pages; RSS would count them twice)."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    stack.extend(int(child) for child in f.read().split())
        except (OSError, StopIteration, ValueError):
            continue  # it ended meanwhile
    return total


def peak_tree_pss(cmd: list[str], env: dict[str, str] | None) -> float:
    """Peak tree_pss_kib of `cmd` (in MiB), sampled every 2 ms in a run of its own
    (sampling costs time: the timed runs are not sampled)."""
    peak = 0
    with subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env) as p:
        while p.poll() is None:
            peak = max(peak, tree_pss_kib(p.pid))
            time.sleep(0.002)
    if p.returncode != 0:
        raise SystemExit(f"the memory run failed (exit {p.returncode}): {' '.join(cmd)}")
    return peak / 1024


def drop_caches() -> str | None:
    """Empty the page cache; the reason it could not, or None."""
    try:
        os.sync()
        with open(DROP_CACHES, "w") as f:
            f.write("3\n")
    except OSError as exc:
        return f"cannot drop the page cache ({DROP_CACHES}: {exc.strerror}); cold runs skipped"
    return None


def cached_mib() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Cached:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def compile_layergc(package: Path | None = None) -> None:
    """Compile layergc's modules (the installed package, or the one in `package`) to
    bytecode once, as installing a wheel does. An editable install does not, and under
    PYTHONDONTWRITEBYTECODE (set on the machines these figures come from) each run
    compiled every module again: 0.12 s of every layergc run, and of no other case."""
    import compileall

    if package is None:
        import layergc

        package = Path(layergc.__file__).parent
    compileall.compile_dir(package, quiet=1)


def remove_index(db: Path) -> None:
    """Delete a SQLite index and the files SQLite keeps beside it."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)


def layergc_command() -> list[str]:
    """The installed console script beside this interpreter (not a pyenv shim,
    whose own start-up would be measured too), else `python -m layergc.cli`."""
    script = Path(sys.executable).parent / "layergc"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "layergc.cli"]


# --- trees ------------------------------------------------------------------------------


@dataclass
class Tree:
    blobs: int
    root: Path
    summary: dict[str, Any]
    go_config: Path

    @property
    def garbage(self) -> int:
        return int(self.summary["garbage"])


def ensure_tree(workdir: Path, blobs: int, seed: int) -> Tree:
    name = f"tree-{blobs}-s{seed}"
    root, marker = workdir / name, workdir / f"{name}.json"
    if not marker.is_file():
        if root.exists():
            shutil.rmtree(root)  # a generation that did not finish
        print(f"generating {name} (once; kept for later runs)...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        generate = [sys.executable, "-m", "layergc.gc.treegen", "--root", str(root)]
        done = subprocess.run(
            [*generate, "--blobs", str(blobs), "--seed", str(seed)],
            check=True,
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        marker.write_text(json.dumps(summary))
        print(f"  {time.perf_counter() - started:.0f} s: {summary}", file=sys.stderr)
    summary = json.loads(marker.read_text())
    config = workdir / f"{name}.registry.yml"
    # JSON is YAML: no yaml import needed here.
    config.write_text(
        json.dumps(
            {
                "version": 0.1,
                "log": {"level": "warn", "accesslog": {"disabled": True}},
                "storage": {
                    "filesystem": {"rootdirectory": str(root)},
                    "delete": {"enabled": True},
                    "maintenance": {"uploadpurging": {"enabled": False}},
                },
                "http": {"addr": "127.0.0.1:0"},
            }
        )
    )
    return Tree(blobs, root, summary, config)


# --- the cases --------------------------------------------------------------------------


class Bench:
    def __init__(self, tree: Tree, workdir: Path) -> None:
        self.tree = tree
        self.out = workdir / f"out-{tree.blobs}"
        self.out.mkdir(exist_ok=True)
        self.db = self.out / "index.db"
        env = dict(os.environ)
        env.pop("AWS_CA_BUNDLE", None)  # the Go registry refuses to start with it
        self.env = env

    def reset_index(self) -> None:
        remove_index(self.db)

    def command(self, case: str) -> list[str]:
        root = str(self.tree.root)
        if case == "go":
            return [GO_BINARY, "garbage-collect", "--dry-run", str(self.tree.go_config)]
        if case == "find":
            return ["find", root, "-type", "f"]
        if case == "minimal":
            return [sys.executable, str(Path(__file__).resolve()), "--minimal-scan", root]
        return [
            *layergc_command(),
            *("sweep", "--root", root, "--db", str(self.db)),
            *("--dry-run", "--grace", "0s", "--json"),
        ]

    def run(self, case: str) -> Sample:
        if case == "first":
            self.reset_index()
        stdout = self.out / f"{case}.out"
        sample = measure(self.command(case), stdout, self.env)
        if sample.ok:
            found = self.found(case, stdout)
            if found is not None and found != self.tree.garbage:
                sample.ok = False
                sample.note = f"found {found} unreferenced, expected {self.tree.garbage}"
        return sample

    def found(self, case: str, stdout: Path) -> int | None:
        """How many unreferenced blobs the run reported (None: it does not say)."""
        if case == "find":
            return None
        text = stdout.read_text()
        if case == "go":
            return text.count("blob eligible for deletion:")
        if case == "minimal":
            return int(text.split()[0])
        report = json.loads(text)
        if report["errors"]:
            raise SystemExit(f"layergc reported errors: {report['errors'][:3]}")
        return len(report["blobs"])


def bench_size(
    tree: Tree, workdir: Path, repeat: int, cold_repeat: int, cold_note: str | None
) -> tuple[dict[str, Result], str]:
    bench = Bench(tree, workdir)
    results = {case: Result(case) for case in CASES}
    load_before = os.getloadavg()[0]
    # Warm: one untimed run each (for "repeat" it also leaves the index to repeat over).
    for case in CASES:
        bench.run(case)
    for _ in range(repeat):
        for case in CASES:  # interleaved, so a burst of load hits every case alike
            results[case].warm.append(bench.run(case))
    bench.reset_index()
    for case in ("first", "repeat"):  # warm; "repeat" over the index "first" leaves
        results[case].pss_mib = peak_tree_pss(bench.command(case), bench.env)
    if cold_note is None:
        for _ in range(cold_repeat):
            for case in CASES:
                drop_caches()
                results[case].cold.append(bench.run(case))
    load = f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}"
    return results, load


# --- the table --------------------------------------------------------------------------


def table(blobs: int, results: dict[str, Result], which: str) -> list[str]:
    go_wall = results["go"].median(which, "wall")
    go_cpu = results["go"].median(which, "cpu")
    if go_wall is None or go_cpu is None:
        return []
    rows = [
        "| blobs | cache | case | wall s | x Go (wall) | CPU s | x Go (CPU) | peak RSS MiB "
        "| peak PSS MiB, all processes | |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for case, result in results.items():
        wall = result.median(which, "wall")
        cpu = result.median(which, "cpu")
        rss = max(s.rss_mib for s in getattr(result, which))
        flags = []
        target = TARGETS.get(case)
        if target is not None and blobs >= 100_000:
            flags.append(f"target {target}x: {'met' if wall / go_wall <= target else 'MISSED'}")
        pss = result.pss_mib if which == "warm" else None
        if case in TARGETS and blobs >= 100_000 and max(rss, pss or 0) >= RSS_TARGET_MIB:
            flags.append(f"memory >= {RSS_TARGET_MIB} MiB")
        notes = {s.note for s in getattr(result, which) if s.note}
        flags.extend(sorted(notes))
        rows.append(
            f"| {blobs:,} | {which} | {case} | {wall:.2f} | {wall / go_wall:.2f} | "
            f"{cpu:.2f} | {cpu / go_cpu:.2f} | {rss:.0f} | "
            f"{'' if pss is None else f'{pss:.0f}'} | {'; '.join(flags)} |"
        )
    return rows


# --- the phase profile ------------------------------------------------------------------


def peak_rss_now() -> float:
    """This process's peak RSS so far, in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def phases_child(root: str, db: str, cprofile: str | None) -> None:
    """Run one `layergc sweep --dry-run --grace 0s --json` in this process with timers
    around its phases; print them as JSON on stderr's last line."""
    started, cpu_started = time.perf_counter(), time.process_time()
    import layergc.cli
    import layergc.gc.run
    import layergc.progress
    import layergc.summary

    # name -> [wall seconds, CPU seconds (the whole process's), calls]
    timings: dict[str, list[float]] = {
        "imports (cli, run, summary, progress)": [
            time.perf_counter() - started,
            time.process_time() - cpu_started,
            1,
            peak_rss_now(),
        ]
    }

    def add(name: str, wall: float, cpu: float) -> None:
        entry = timings.setdefault(name, [0.0, 0.0, 0, 0.0])
        entry[0] += wall
        entry[1] += cpu
        entry[2] += 1
        entry[3] = peak_rss_now()

    def timed(name: str, fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t, c = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                add(name, time.perf_counter() - t, time.process_time() - c)

        return wrapper

    from layergc.gc import db as dbmod
    from layergc.gc import index, scan, sweep

    layergc.gc.run.open_index = timed("open_index (engine, schema check/migrate)", dbmod.open_index)
    layergc.gc.run.make_driver = timed("make_driver", layergc.gc.run.make_driver)
    mark_stats: list[Any] = []
    real_mark = scan.mark

    def mark(*args: Any, **kwargs: Any) -> Any:
        result = real_mark(*args, **kwargs)
        mark_stats.append(result.stats)
        return result

    scan.mark = timed("mark (scan.mark)", mark)
    for cls, names in (
        (index.Index, ("start_run", "mark_stale_running_runs", "finish_run")),
        (index.Index, ("observe_unreferenced", "forget_absent")),
        (index.IndexReferenceCache, ("get_many", "put_many")),
        (sweep.Sweeper, ("_sweep_uploads", "_decide_manifests", "_decide_blobs", "_stat_blobs")),
        (sweep.Report, ("as_json",)),
    ):
        for name in names:
            setattr(cls, name, timed(f"{cls.__name__}.{name}", getattr(cls, name)))
    real_json = layergc.cli.json

    class _Json:
        dumps = staticmethod(timed("output: json.dumps of the report", real_json.dumps))

    layergc.cli.json = _Json  # type: ignore[assignment]
    layergc.cli.click.echo = timed("output: click.echo", layergc.cli.click.echo)

    argv = ["sweep", "--root", root, "--db", db, "--dry-run", "--grace", "0s", "--json"]
    profiler = None
    if cprofile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    t, c = time.perf_counter(), time.process_time()
    try:
        layergc.cli.main(argv, standalone_mode=False)
    except SystemExit:
        pass
    add("command (after imports)", time.perf_counter() - t, time.process_time() - c)
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(cprofile)
    add("total in process", time.perf_counter() - started, time.process_time() - cpu_started)
    stats = mark_stats[0] if mark_stats else None
    out = {
        "phases": timings,
        "mark_seconds": dict(stats.seconds) if stats else {},
        "mark_counts": {
            k: getattr(stats, k)
            for k in (
                "manifests_parsed",
                "manifests_cached",
                "layer_links",
                "blobs",
                "unreferenced",
            )
        }
        if stats
        else {},
    }
    print(json.dumps(out), file=sys.stderr)


def profile(tree: Tree, workdir: Path, cprofile_dir: Path | None) -> list[str]:
    bench = Bench(tree, workdir)
    lines: list[str] = []
    startup = measure([sys.executable, "-c", "pass"], bench.out / "startup.out").wall
    lines.append(
        f"python -c pass: {startup:.3f} s (interpreter start-up, not in the figures below)"
    )
    bench.reset_index()
    for run in ("first", "repeat"):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--phases-child"]
        cmd += [str(tree.root), str(bench.db)]
        if cprofile_dir is not None:
            cprofile_dir.mkdir(parents=True, exist_ok=True)
            cmd += ["--cprofile-file", str(cprofile_dir / f"{run}-{tree.blobs}.prof")]
        sample = measure(cmd, bench.out / f"phases-{run}.out", bench.env)
        err = (bench.out / f"phases-{run}.err").read_text().strip().splitlines()
        data = json.loads(err[-1])
        lines.append("")
        lines.append(
            f"{run} dry run at {tree.blobs:,} blobs: wall {sample.wall:.2f} s, "
            f"CPU {sample.cpu:.2f} s, peak RSS {sample.rss_mib:.0f} MiB"
        )
        lines.append("     wall s    CPU s  peak RSS MiB at its end")
        for name, (wall, cpu, calls, rss) in data["phases"].items():
            more = f"  ({calls} calls)" if calls > 1 else ""
            lines.append(f"    {wall:7.3f}  {cpu:7.3f}  {rss:5.0f}  {name}{more}")
        lines.append(f"  mark phases: {data['mark_seconds']}")
        lines.append(f"  mark counts: {data['mark_counts']}")
        if cprofile_dir is not None:
            import pstats

            lines.append(f"  cProfile top (tottime), {cprofile_dir}/{run}-{tree.blobs}.prof:")
            stats = pstats.Stats(str(cprofile_dir / f"{run}-{tree.blobs}.prof"))
            entries = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:15]  # type: ignore[attr-defined]
            for (file, line, func), (_cc, calls, tottime, cumtime, _) in entries:
                where = f"{Path(file).name}:{line}({func})"
                lines.append(f"    {tottime:7.3f} {cumtime:7.3f} {calls:8d}  {where}")
    return lines


# --- main -------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="2000,20000,100000", help="blob counts, comma-separated")
    parser.add_argument("--workdir", default="/tmp/layergc-bench", help="trees and indexes here")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3, help="timed warm runs (median kept)")
    parser.add_argument("--cold-repeat", type=int, default=1, help="cold runs per case")
    parser.add_argument("--no-cold", action="store_true", help="skip the cold-cache runs")
    parser.add_argument("--profile", action="store_true", help="phase profile at the largest size")
    parser.add_argument("--profile-only", action="store_true", help="the profile alone")
    parser.add_argument("--cprofile", metavar="DIR", help="also write cProfile dumps here")
    parser.add_argument("--json", metavar="FILE", help="write every sample here as JSON")
    # Internal: the children this script runs.
    parser.add_argument("--minimal-scan", metavar="ROOT", help=argparse.SUPPRESS)
    parser.add_argument("--phases-child", nargs=2, metavar=("ROOT", "DB"), help=argparse.SUPPRESS)
    parser.add_argument("--cprofile-file", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.minimal_scan:
        print(minimal_scan(args.minimal_scan))
        return
    if args.phases_child:
        phases_child(*args.phases_child, args.cprofile_file)
        return

    if shutil.which(GO_BINARY) is None:
        raise SystemExit(f"{GO_BINARY} is not installed (Debian package docker-registry)")
    compile_layergc()
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    trees = [ensure_tree(workdir, n, args.seed) for n in sizes]

    cold_note = "cold runs skipped (--no-cold)" if args.no_cold else None
    if cold_note is None:
        before = cached_mib()
        cold_note = drop_caches()
        if cold_note is None:
            print(
                f"page cache dropped: Cached {before:.0f} -> {cached_mib():.0f} MiB",
                file=sys.stderr,
            )

    lines: list[str] = []
    dump: dict[str, Any] = {}
    if not args.profile_only:
        for tree in trees:
            print(f"benchmarking {tree.blobs:,} blobs...", file=sys.stderr, flush=True)
            results, load = bench_size(tree, workdir, args.repeat, args.cold_repeat, cold_note)
            dump[str(tree.blobs)] = {
                c: {
                    "warm": [vars(s) for s in r.warm],
                    "cold": [vars(s) for s in r.cold],
                    "pss_mib": r.pss_mib,
                }
                for c, r in results.items()
            }
            block = [f"{tree.blobs:,} blobs ({tree.summary['files']:,} files), {load}"]
            block.extend(table(tree.blobs, results, "warm"))
            if results["go"].cold:
                block.extend(table(tree.blobs, results, "cold")[2:])
            print("\n".join(block), file=sys.stderr, flush=True)
            lines.extend([*block, ""])
        cold = cold_note or f"page cache dropped before each run, median of {args.cold_repeat}"
        lines.append(f"warm: median of {args.repeat} after one untimed run each; cold: {cold}")
        lines.append(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    if args.profile or args.profile_only:
        cprofile_dir = Path(args.cprofile).resolve() if args.cprofile else None
        lines.append("")
        lines.extend(profile(trees[-1], workdir, cprofile_dir))
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps(dump, indent=1))


if __name__ == "__main__":
    main()
