"""reference cache: drop what an older parser cached

The manifest parser now refuses a manifest holding a key that the Go registry
reads as one of the fields the parser reads, spelled in another case ("Layers"
beside or instead of "layers"): the references an older layergc cached for such
a manifest hid what the Go registry sees. No cheap test tells those rows apart,
so every cached row goes; the next mark parses its manifests again, once.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(sa.text("DELETE FROM layergc_manifest_references"))


def downgrade() -> None:
    pass  # a cache: nothing to put back
