"""The human-readable summary of a sweep report (the JSON report's twin)."""

from __future__ import annotations

from collections import Counter
from typing import Any


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def render(report: dict[str, Any]) -> str:
    dry = report["dry_run"]
    lines = [
        f"layergc {report.get('mode', 'sweep')} run {report['run_id']}"
        f"{' (dry run)' if dry else ''}: {report.get('status', '?')}",
        f"  scanned {report['repositories']} repositories, "
        f"{report['manifests_marked']} manifests kept, {report['blobs_marked']} blobs in use",
    ]
    for kind in ("blobs", "manifests", "uploads"):
        actions = Counter(item["action"] for item in report[kind])
        if actions:
            parts = ", ".join(f"{n} {action}" for action, n in sorted(actions.items()))
            lines.append(f"  {kind}: {parts}")
        else:
            lines.append(f"  {kind}: none")
    reclaimable = report.get("bytes_reclaimable", 0)
    if dry:
        lines.append(f"  reclaimable: {human_bytes(reclaimable)}")
    else:
        lines.append(f"  reclaimed: {human_bytes(report['bytes_reclaimed'])}")
    top = report.get("top_repositories") or []
    if top:
        lines.append("  most reclaimable bytes, by repository (through layer links):")
        for entry in top[:5]:
            lines.append(f"    {human_bytes(entry['bytes']):>10}  {entry['repository']}")
    for warning in report.get("warnings", []):
        lines.append(f"  warning: {warning}")
    errors = report.get("errors", [])
    if errors:
        lines.append(f"  {len(errors)} errors:")
        for err in errors[:20]:
            where = f" ({err['path']})" if err.get("path") else ""
            lines.append(f"    {err['kind']}: {err['message']}{where}")
        if len(errors) > 20:
            lines.append(f"    ... and {len(errors) - 20} more (see --json)")
    return "\n".join(lines)
