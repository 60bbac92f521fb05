"""Initial schema: items, users, events, audit_log.

Revision ID: 0001
Revises:
Create Date: 2026-05-09

Hand-written to mirror ``moerec.storage.tables`` (a test compares the migrated database
with that metadata on SQLite and PostgreSQL). Timestamps are plain
``DateTime(timezone=True)`` here: the UTC conversion of ``tables.UTCDateTime`` happens in
Python and does not change the column, and a migration must not import code that may change.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _serial() -> sa.types.TypeEngine[int]:
    # SQLite only auto-increments a column declared exactly INTEGER PRIMARY KEY.
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _timestamp() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "items",
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("title", sa.Text(), nullable=True),
        sa.Column("created_at", _timestamp(), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_items")),
    )
    op.create_table(
        "users",
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("history_version", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("created_at", _timestamp(), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
    )
    op.create_table(
        "events",
        sa.Column("id", _serial(), autoincrement=True, nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("item_id", sa.String(128), nullable=False),
        sa.Column("event_type", sa.String(32), nullable=False),
        sa.Column("occurred_at", _timestamp(), nullable=False),
        sa.Column("received_at", _timestamp(), server_default=sa.func.now(), nullable=False),
        sa.Column("idempotency_key", sa.String(128), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_events_idempotency_key")),
    )
    op.create_index(
        op.f("ix_events_user_id_occurred_at_id"),
        "events",
        ["user_id", "occurred_at", "id"],
        unique=False,
    )
    op.create_table(
        "audit_log",
        sa.Column("id", _serial(), autoincrement=True, nullable=False),
        sa.Column("at", _timestamp(), server_default=sa.func.now(), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(256), nullable=True),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )


def downgrade() -> None:
    op.drop_table("audit_log")
    op.drop_index(op.f("ix_events_user_id_occurred_at_id"), table_name="events")
    op.drop_table("events")
    op.drop_table("users")
    op.drop_table("items")
