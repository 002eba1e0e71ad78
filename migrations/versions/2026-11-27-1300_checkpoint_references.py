"""checkpoint references: the database keeps (store, key, epoch, size, SHA-256); the bytes
move to ``checkpoint_objects`` (the database store) or to a folder / S3 bucket

Existing checkpoints are moved into ``checkpoint_objects`` under the database store's key for
attempt 0, with their digest. Downgrading copies database-stored bytes back; references to
bytes in a folder or bucket cannot be brought back into the row and are dropped (those runs
would restart from their first epoch).

Revision ID: 5c0e8a41d7b2
Revises: 0002_change_feed
Create Date: 2026-11-27 13:00:00+00:00
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "5c0e8a41d7b2"
down_revision: str | None = "0002_change_feed"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

checkpoints = sa.table(
    "checkpoints",
    sa.column("run_id", sa.String),
    sa.column("epoch", sa.Integer),
    sa.column("data", sa.LargeBinary),
    sa.column("store", sa.String),
    sa.column("key", sa.String),
    sa.column("sha256", sa.String),
    sa.column("created_at", sa.DateTime(timezone=True)),
)
objects = sa.table(
    "checkpoint_objects",
    sa.column("key", sa.String),
    sa.column("data", sa.LargeBinary),
    sa.column("created_at", sa.DateTime(timezone=True)),
)


def _is_postgres() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    op.create_table(
        "checkpoint_objects",
        sa.Column("key", sa.String(length=300), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_checkpoint_objects")),
    )
    if _is_postgres():
        # Float tensors barely compress: out of line, without trying pglz first.
        op.execute("ALTER TABLE checkpoint_objects ALTER COLUMN data SET STORAGE EXTERNAL")
    with op.batch_alter_table("checkpoints") as batch:
        batch.add_column(sa.Column("store", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("key", sa.String(length=300), nullable=True))
        batch.add_column(sa.Column("sha256", sa.String(length=64), nullable=True))
    _move_bytes_out()
    with op.batch_alter_table("checkpoints") as batch:
        batch.alter_column("store", existing_type=sa.String(length=16), nullable=False)
        batch.alter_column("key", existing_type=sa.String(length=300), nullable=False)
        batch.alter_column("sha256", existing_type=sa.String(length=64), nullable=False)
        batch.alter_column("size_bytes", existing_type=sa.Integer(), type_=sa.BigInteger())
        batch.drop_column("data")


def _move_bytes_out() -> None:
    connection = op.get_bind()
    listed = connection.execute(sa.select(checkpoints.c.run_id, checkpoints.c.epoch)).all()
    for run_id, epoch in listed:  # one checkpoint in memory at a time
        row = connection.execute(
            sa.select(checkpoints.c.data, checkpoints.c.created_at).where(
                checkpoints.c.run_id == run_id
            )
        ).one()
        data = bytes(row.data)
        key = f"{run_id}/{epoch:06d}-0.ckpt"
        connection.execute(
            objects.insert().values(key=key, data=data, created_at=row.created_at)
        )
        connection.execute(
            checkpoints.update()
            .where(checkpoints.c.run_id == run_id)
            .values(store="database", key=key, sha256=hashlib.sha256(data).hexdigest())
        )


def downgrade() -> None:
    connection = op.get_bind()
    connection.execute(checkpoints.delete().where(checkpoints.c.store != "database"))
    with op.batch_alter_table("checkpoints") as batch:
        batch.add_column(sa.Column("data", sa.LargeBinary(), nullable=True))
    connection.execute(
        checkpoints.update().values(
            data=sa.select(objects.c.data)
            .where(objects.c.key == checkpoints.c.key)
            .scalar_subquery()
        )
    )
    connection.execute(checkpoints.delete().where(checkpoints.c.data.is_(None)))
    with op.batch_alter_table("checkpoints") as batch:
        batch.alter_column("data", existing_type=sa.LargeBinary(), nullable=False)
        batch.alter_column("size_bytes", existing_type=sa.BigInteger(), type_=sa.Integer())
        batch.drop_column("sha256")
        batch.drop_column("key")
        batch.drop_column("store")
    if _is_postgres():
        op.execute("ALTER TABLE checkpoints ALTER COLUMN data SET STORAGE EXTERNAL")
    op.drop_table("checkpoint_objects")
