"""change feed: when each epoch row was recorded, and runs indexed by their last change

The API's server-sent events read "what changed since T" with one indexed query per process
(``runs.updated_at``), and resume a client's stream from the time of the last event it saw
(``epoch_metrics.recorded_at``, written in the epoch's own transaction).

Revision ID: 0002_change_feed
Revises: 0001
Create Date: 2026-11-28 09:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_change_feed"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable and without a server default: SQLite cannot add a column whose default is not a
    # constant, and rows written before this revision are older than any stream that resumes.
    op.add_column(
        "epoch_metrics", sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.create_index(op.f("ix_runs_updated_at"), "runs", ["updated_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_runs_updated_at"), table_name="runs")
    with op.batch_alter_table("epoch_metrics") as batch:
        batch.drop_column("recorded_at")
