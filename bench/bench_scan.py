"""Mark / dry-run benchmark (run by hand, not a test).

    python bench/bench_scan.py --dir /tmp/lgcbench --blobs 2000,20000,100000

For each size, a tree is generated once (layergc.gc.treegen, kept in `--dir`
and reused) and then, each in a fresh child process, best of `--repeat`:

  find          `find ROOT -type f` (a bare walk of the tree)
  minimal       a minimal Python scan reading only what a mark needs: the
                revision links, the manifests, the blob listing
  go-gc         `docker-registry garbage-collect --dry-run` (if installed)
  mark          layergc.gc.scan.mark on the FilesystemDriver, nothing cached
  mark-cached   the same with the SQLite reference cache filled by a first run
  sweep         `layergc sweep --dry-run --json` with a new index
  sweep-again   the same command again over the same index (nothing changed)

and prints wall time, CPU time, peak RSS and the ratio to the Go registry's
dry run. `--cold` drops the page cache before every run (root only).
`--profile` runs one mark under cProfile and prints where the time goes.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MINIMAL = textwrap.dedent(
    """
    import json, os, sys
    v2 = sys.argv[1] + "/docker/registry/v2"
    blobs = v2 + "/blobs/sha256"
    names = [e.name for p in os.scandir(blobs) for e in os.scandir(p.path)]
    manifests = set()
    def walk(path):
        with os.scandir(path) as it:
            dirs = [e for e in it if e.is_dir()]
        if any(e.name == "_manifests" for e in dirs):
            revisions = path + "/_manifests/revisions/sha256"
            for e in os.scandir(revisions) if os.path.isdir(revisions) else ():
                with open(e.path + "/link", "rb") as f:
                    manifests.add(f.read().decode()[7:])
        for e in dirs:
            if not e.name.startswith("_"):
                walk(e.path)
    walk(v2 + "/repositories")
    marked = set(manifests)
    for h in manifests:
        with open(f"{blobs}/{h[:2]}/{h}/data", "rb") as f:
            m = json.loads(f.read())
        for d in [m.get("config") or {}, *m.get("layers", ()), *m.get("manifests", ())]:
            if "digest" in d:
                marked.add(d["digest"][7:])
    print(sum(1 for n in names if n not in marked))
    """
)

MARK = textwrap.dedent(
    """
    import sys
    from layergc.driver.filesystem import FilesystemDriver
    from layergc.gc import scan
    cache = None
    if len(sys.argv) > 2:
        from layergc.gc.db import open_index
        cache = open_index(sys.argv[2]).reference_cache()
    result = scan.mark(FilesystemDriver(sys.argv[1]), reference_cache=cache)
    print(len(result.unreferenced), result.stats.manifests_parsed, result.stats.seconds)
    """
)

GO_CONFIG = """\
version: 0.1
log: {{level: error}}
storage:
  filesystem: {{rootdirectory: {root}}}
  delete: {{enabled: true}}
http: {{addr: 127.0.0.1:0}}
"""


def measured(cmd: list[str], cold: bool, repeat: int) -> dict[str, Any]:
    """Best of `repeat` runs by wall time: wall and CPU time, and the peak RSS of
    that child process (and of its own children, for the shell pipelines)."""
    best: dict[str, Any] | None = None
    for _ in range(repeat):
        if cold:
            drop_caches()
        with tempfile.TemporaryFile() as out:
            start = time.perf_counter()
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.DEVNULL, cwd=ROOT, env=_env()
            )
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - start
            proc.returncode = os.waitstatus_to_exitcode(status)
            out.seek(0)
            text = out.read().decode(errors="replace").strip()
        result = {
            "wall": round(wall, 3),
            "cpu": round(usage.ru_utime + usage.ru_stime, 3),
            "rss_mib": round(usage.ru_maxrss / 1024, 1),
            "rc": proc.returncode,
            "out": text[-160:],
        }
        if best is None or result["wall"] < best["wall"]:
            best = result
    assert best is not None
    return best


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    return env


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def ensure_tree(base: Path, blobs: int, seed: int) -> Path:
    root = base / f"tree-{blobs}-{seed}"
    stamp = root / "summary.json"
    if stamp.exists():
        return root
    if root.exists():
        shutil.rmtree(root)
    # In a child: a parent grown by the generator would show in every later
    # child's peak RSS (fork copies the page tables before exec).
    cmd = [sys.executable, "-m", "layergc.gc.treegen", "--root", str(root)]
    start = time.perf_counter()
    done = subprocess.run(
        [*cmd, "--blobs", str(blobs), "--seed", str(seed)],
        capture_output=True,
        check=True,
        env=_env(),
        cwd=ROOT,
    )
    took = time.perf_counter() - start
    summary = json.loads(done.stdout)
    stamp.write_text(json.dumps({**summary, "seconds": round(took, 1)}))
    return root


def bench_size(base: Path, blobs: int, args: argparse.Namespace) -> dict[str, Any]:
    root = ensure_tree(base, blobs, args.seed)
    py = sys.executable
    rows: dict[str, Any] = {}
    cold, repeat = args.cold, args.repeat
    rows["find"] = measured(["sh", "-c", f"find {root} -type f | wc -l"], cold, repeat)
    rows["minimal"] = measured([py, "-c", MINIMAL, str(root)], cold, repeat)
    go = shutil.which("docker-registry")
    if go:
        with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
            f.write(GO_CONFIG.format(root=root))
        rows["go-gc"] = measured(
            ["sh", "-c", f"{go} garbage-collect --dry-run {f.name} | tail -1"], cold, repeat
        )
        os.unlink(f.name)
    rows["mark"] = measured([py, "-c", MARK, str(root)], cold, repeat)
    with tempfile.TemporaryDirectory() as tmp:
        db = f"sqlite:///{tmp}/refs.db"
        subprocess.run([py, "-c", MARK, str(root), db], check=True, env=_env(), cwd=ROOT)
        rows["mark-cached"] = measured([py, "-c", MARK, str(root), db], cold, repeat)
    sweep = [py, "-m", "layergc.cli", "sweep", "--dry-run", "--json", "--root", str(root)]
    with tempfile.TemporaryDirectory() as tmp:
        first: dict[str, Any] | None = None
        for _ in range(repeat):  # a new index each time: every run is a first run
            db = f"{tmp}/first-{time.monotonic_ns()}.db"
            result = measured([*sweep, "--db", db], cold, 1)
            if first is None or result["wall"] < first["wall"]:
                first = result
        rows["sweep"] = first
        rows["sweep-again"] = measured([*sweep, "--db", db], cold, repeat)
    reference = rows.get("go-gc", {}).get("wall")
    for row in rows.values():
        if reference:
            row["x_go"] = round(row["wall"] / reference, 3)
    summary = json.loads((root / "summary.json").read_text())
    return {"blobs": blobs, "tree": summary, "rows": rows}


def profile(base: Path, blobs: int, seed: int, top: int) -> None:
    from layergc.driver.filesystem import FilesystemDriver
    from layergc.gc import scan

    root = ensure_tree(base, blobs, seed)
    driver = FilesystemDriver(root)
    scan.mark(driver)  # warm the page cache
    profiler = cProfile.Profile()
    profiler.enable()
    result = scan.mark(driver)
    profiler.disable()
    print(f"phases (wall, s, under the profiler): {result.stats.seconds}")
    stats = pstats.Stats(profiler)
    stats.sort_stats("tottime").print_stats(top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default="/tmp/layergc-bench", type=Path)
    parser.add_argument("--blobs", default="2000,20000,100000")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cold", action="store_true", help="drop the page cache per run")
    parser.add_argument("--profile", action="store_true", help="cProfile one mark instead")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    sizes = [int(n) for n in args.blobs.split(",")]
    if args.profile:
        for blobs in sizes:
            profile(args.dir, blobs, args.seed, args.top)
        return
    results = [bench_size(args.dir, blobs, args) for blobs in sizes]
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for res in results:
        print(f"\n{res['blobs']} blobs: {res['tree']}")
        print(f"  {'':12} {'wall s':>8} {'cpu s':>8} {'rss MiB':>8} {'x go':>6}")
        for name, row in res["rows"].items():
            x = row.get("x_go", "")
            print(
                f"  {name:12} {row['wall']:8.3f} {row['cpu']:8.3f} {row['rss_mib']:8.1f} {x!s:>6}"
                + ("" if row["rc"] in (0, 1) else f"  (exit {row['rc']})")
            )


if __name__ == "__main__":
    main()
