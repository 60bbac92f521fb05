"""Events record the A/B arm the user was served by.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04

A nullable column, so the migration is instant on a large table (no rewrite, no default to
fill) and every event stored before it, or outside an experiment, reads as NULL.
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
    op.add_column("events", sa.Column("arm", sa.String(32), nullable=True))


def downgrade() -> None:
    # batch mode: SQLite before 3.35 cannot drop a column in place
    with op.batch_alter_table("events") as batch:
        batch.drop_column("arm")
