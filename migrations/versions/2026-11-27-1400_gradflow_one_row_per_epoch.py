"""gradient flow as one row per epoch: ``gradflow_epochs`` holds each statistic of each window
as a float64 array (a value per layer) instead of one ``gradflow_stats`` row per layer

An epoch write inserts one row instead of 39 (75 with BatchNorm), the table and its index hold
one entry per epoch, and a reader decodes one array per epoch: measured in docs/scale.md.
Existing rows are packed (a layer never written reads as NaN, as before); downgrading
unpacks them.

Revision ID: 9d4f2b7c1e60
Revises: 5c0e8a41d7b2
Create Date: 2026-11-27 14:00:00+00:00
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "9d4f2b7c1e60"
down_revision: str | None = "5c0e8a41d7b2"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = [f"{w}_{s}" for w in ("last_batch", "epoch_mean") for s in ("mean_abs", "max_abs", "l2")]
per_layer = sa.table("gradflow_stats", sa.column("run_id", sa.String),
                     sa.column("epoch", sa.Integer), sa.column("layer_index", sa.Integer),
                     *(sa.column(c, sa.Float) for c in COLUMNS))
per_epoch = sa.table("gradflow_epochs", sa.column("run_id", sa.String),
                     sa.column("epoch", sa.Integer),
                     *(sa.column(c, sa.LargeBinary) for c in COLUMNS))


def _pack(values: list[float]) -> bytes:
    # as gradlab.store.float_arrays.pack_floats (migrations do not import the store)
    return struct.pack(f"<{len(values)}d", *values)


def _create_per_layer_table() -> None:
    op.create_table(
        "gradflow_stats",
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("layer_index", sa.Integer(), nullable=False),
        *(sa.Column(c, sa.Float(), nullable=False) for c in COLUMNS),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_gradflow_stats_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "epoch", "layer_index", name=op.f("pk_gradflow_stats")),
    )


def upgrade() -> None:
    op.create_table(
        "gradflow_epochs",
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        *(sa.Column(c, sa.LargeBinary(), nullable=False) for c in COLUMNS),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_gradflow_epochs_run_id_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("run_id", "epoch", name=op.f("pk_gradflow_epochs")),
    )
    if op.get_bind().dialect.name == "postgresql":
        # A row is 6 x 8 bytes x layers (3.6 kB at 75 layers): keep it inline and uncompressed
        # (floats barely compress) rather than TOASTing it, so a read is one heap fetch.
        op.execute("ALTER TABLE gradflow_epochs SET (toast_tuple_target = 8160)")
        for column in COLUMNS:
            op.execute(f"ALTER TABLE gradflow_epochs ALTER COLUMN {column} SET STORAGE MAIN")
    _pack_existing_rows()
    op.drop_table("gradflow_stats")


def _pack_existing_rows() -> None:
    connection = op.get_bind()
    rows = connection.execute(
        sa.select(per_layer)
        .order_by(per_layer.c.run_id, per_layer.c.epoch, per_layer.c.layer_index)
        .execution_options(yield_per=10_000)  # streamed, not all in memory
    )
    key: tuple[str, int] | None = None
    layers: dict[int, tuple[float, ...]] = {}

    def flush() -> None:
        if key is None:
            return
        count = max(layers) + 1
        arrays = {c: _pack([layers[j][i] if j in layers else math.nan for j in range(count)])
                  for i, c in enumerate(COLUMNS)}
        connection.execute(per_epoch.insert().values(run_id=key[0], epoch=key[1], **arrays))

    with rows:  # a server-side cursor: closed before the table is dropped
        for row in rows:
            if (row.run_id, row.epoch) != key:
                flush()
                key, layers = (row.run_id, row.epoch), {}
            layers[row.layer_index] = tuple(getattr(row, c) for c in COLUMNS)
    flush()


def downgrade() -> None:
    _create_per_layer_table()
    connection = op.get_bind()
    for row in connection.execute(sa.select(per_epoch)).all():
        arrays = [struct.unpack(f"<{len(getattr(row, c)) // 8}d", getattr(row, c))
                  for c in COLUMNS]
        # A layer all NaN reads the same without a row (and SQLite stores NaN as NULL).
        written = [j for j in range(len(arrays[0]))
                   if not all(math.isnan(values[j]) for values in arrays)]
        if written:
            connection.execute(per_layer.insert(), [
                {"run_id": row.run_id, "epoch": row.epoch, "layer_index": j,
                 **{c: arrays[i][j] for i, c in enumerate(COLUMNS)}} for j in written
            ])
    op.drop_table("gradflow_epochs")
