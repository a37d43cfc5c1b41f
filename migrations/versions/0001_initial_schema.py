"""initial schema: runs, candidates, deletions, manifest references, marks, leases

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the model's column types: a migration must not change when models do.
TIMESTAMP = sa.DateTime(timezone=True)
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
BIGINT_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _counter(name: str) -> sa.Column:
    return sa.Column(name, sa.BigInteger(), server_default="0", nullable=False)


def upgrade() -> None:
    op.create_table(
        "layergc_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("mode", sa.String(length=32), nullable=False),
        sa.Column("dry_run", sa.Boolean(), nullable=False),
        sa.Column("delete_untagged", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("started_at", TIMESTAMP, nullable=False),
        sa.Column("finished_at", TIMESTAMP, nullable=True),
        sa.Column("host", sa.String(length=255), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        _counter("repositories"),
        _counter("manifests_marked"),
        _counter("blobs_marked"),
        _counter("blobs_found"),
        _counter("blobs_deleted"),
        _counter("manifests_found"),
        _counter("manifests_deleted"),
        _counter("uploads_found"),
        _counter("uploads_deleted"),
        _counter("bytes_reclaimed"),
        sa.Column("errors", JSON, nullable=False),
        sa.Column("report", JSON, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_layergc_runs")),
    )
    op.create_index(op.f("ix_layergc_runs_status"), "layergc_runs", ["status"])

    op.create_table(
        "layergc_candidates",
        sa.Column("id", BIGINT_PK, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("repository", sa.Text(), nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("first_seen_unreferenced", TIMESTAMP, nullable=False),
        sa.Column("last_seen", TIMESTAMP, nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("last_run_id", sa.Integer(), nullable=True),
        sa.Column("quarantine_path", sa.Text(), nullable=True),
        sa.Column("detail", JSON, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_layergc_candidates")),
        sa.UniqueConstraint("kind", "key", name=op.f("uq_layergc_candidates_kind_key")),
    )
    op.create_index("ix_layergc_candidates_kind_state", "layergc_candidates", ["kind", "state"])

    op.create_table(
        "layergc_deletions",
        sa.Column("id", BIGINT_PK, nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("repository", sa.Text(), nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("deleted_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["layergc_runs.id"], name=op.f("fk_layergc_deletions_run_id_layergc_runs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_layergc_deletions")),
    )
    op.create_index("ix_layergc_deletions_kind_key", "layergc_deletions", ["kind", "key"])
    op.create_index(op.f("ix_layergc_deletions_run_id"), "layergc_deletions", ["run_id"])

    op.create_table(
        "layergc_manifest_references",
        sa.Column("digest", sa.String(length=200), nullable=False),
        sa.Column("media_type", sa.Text(), nullable=True),
        sa.Column("kind", sa.String(length=32), nullable=True),
        sa.Column("blobs", sa.Text(), nullable=False),
        sa.Column("children", sa.Text(), nullable=False),
        sa.Column("subject", sa.String(length=200), nullable=True),
        sa.Column("extra", JSON, nullable=True),
        sa.PrimaryKeyConstraint("digest", name=op.f("pk_layergc_manifest_references")),
    )

    op.create_table(
        "layergc_marks",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "digest", name=op.f("pk_layergc_marks")),
        sqlite_with_rowid=False,
    )

    op.create_table(
        "layergc_leases",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("holder", sa.Text(), nullable=False),
        sa.Column("token", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_layergc_leases")),
    )


def downgrade() -> None:
    op.drop_table("layergc_leases")
    op.drop_table("layergc_marks")
    op.drop_table("layergc_manifest_references")
    op.drop_index("ix_layergc_deletions_run_id", table_name="layergc_deletions")
    op.drop_index("ix_layergc_deletions_kind_key", table_name="layergc_deletions")
    op.drop_table("layergc_deletions")
    op.drop_index("ix_layergc_candidates_kind_state", table_name="layergc_candidates")
    op.drop_table("layergc_candidates")
    op.drop_index("ix_layergc_runs_status", table_name="layergc_runs")
    op.drop_table("layergc_runs")
