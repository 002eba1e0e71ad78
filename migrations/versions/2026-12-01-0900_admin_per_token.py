"""api_tokens.is_admin: admin is a grant of one token, revocable, no longer of the user

Every token of a user who was an admin keeps the grant (nothing changes for a deployment that
upgrades); from now on `gradlab token create --admin` grants it to the new token only, and
`gradlab token revoke-admin` takes it away. users.is_admin goes: one place says who is admin.

Revision ID: 3c8f1e5a7d20
Revises: 7b3e9d2a4c15
Create Date: 2026-12-01 09:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "3c8f1e5a7d20"
down_revision: str | None = "7b3e9d2a4c15"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(
            sa.Column("is_admin", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.execute(
        "UPDATE api_tokens SET is_admin = TRUE WHERE user_id IN "
        "(SELECT id FROM users WHERE is_admin = TRUE)"
    )
    with op.batch_alter_table("users") as batch:
        batch.drop_column("is_admin")


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(
            sa.Column("is_admin", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    # A user with any admin token was an admin (the old model had no finer grant).
    op.execute(
        "UPDATE users SET is_admin = TRUE WHERE id IN "
        "(SELECT user_id FROM api_tokens WHERE is_admin = TRUE AND revoked_at IS NULL)"
    )
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_column("is_admin")
