"""`layergc report`: past runs and pending candidates, from the index alone."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from layergc.summary import human_bytes


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def index_report(index: Any, limit: int = 20) -> dict[str, Any]:
    runs = [
        {
            "run_id": run.id,
            "mode": run.mode,
            "dry_run": run.dry_run,
            "status": run.status,
            "started_at": _iso(run.started_at),
            "finished_at": _iso(run.finished_at),
            "host": run.host,
            "blobs_found": run.blobs_found,
            "blobs_deleted": run.blobs_deleted,
            "manifests_deleted": run.manifests_deleted,
            "uploads_deleted": run.uploads_deleted,
            "bytes_reclaimed": run.bytes_reclaimed,
            "errors": len(run.errors or []),
        }
        for run in index.runs(limit)
    ]
    pending = [
        {
            "kind": c.kind,
            "key": c.key,
            "repository": c.repository,
            "size": c.size,
            "first_seen_unreferenced": _iso(c.first_seen_unreferenced),
            "last_seen": _iso(c.last_seen),
        }
        for c in index.pending_candidates(limit)
    ]
    return {"runs": runs, "pending": pending}


def render_index_report(data: dict[str, Any]) -> str:
    lines = ["recent runs:"] if data["runs"] else ["no runs recorded yet"]
    for run in data["runs"]:
        dry = " dry-run" if run["dry_run"] else ""
        lines.append(
            f"  #{run['run_id']:<5} {run['started_at']}  {run['mode']}{dry:<8} {run['status']:<11}"
            f" blobs {run['blobs_deleted']}/{run['blobs_found']} deleted,"
            f" {human_bytes(run['bytes_reclaimed'])} reclaimed, {run['errors']} errors"
        )
    if data["pending"]:
        lines.append("pending candidates (longest unreferenced first):")
        for c in data["pending"]:
            size = human_bytes(c["size"]) if c["size"] is not None else "?"
            lines.append(
                f"  {c['kind']:<8} {size:>10}  since {c['first_seen_unreferenced']}  {c['key']}"
            )
    else:
        lines.append("no pending candidates")
    return "\n".join(lines)
