"""runs.pack: the fused pack a run's last attempt trained in (NULL: alone)

Revision ID: 7b3e9d2a4c15
Revises: 5e0c7a1f3b92
Create Date: 2026-11-29 16:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "7b3e9d2a4c15"
down_revision: str | None = "5e0c7a1f3b92"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("pack", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("pack")
