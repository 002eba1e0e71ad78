"""Typed ORM models. The schema itself exists only through the Alembic migrations.

Relationships never load lazily (``lazy="raise"``): a read that needs related rows says so with
``selectinload`` in its repository query, so no view ever runs a hidden SELECT per row, and
one that forgets fails loudly instead of slowly.

Layout: a study groups experiments; an experiment has one run per seed; a run has one row per
finished epoch in ``epoch_metrics`` and in ``gradflow_epochs`` (a value per layer in arrays),
and at most one (its latest) ``checkpoints`` reference (the bytes are in the checkpoint
store). Primary keys make duplicate epochs impossible.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship
from sqlalchemy.sql.expression import false

from gradlab.science.records import RUN_STATUSES
from gradlab.store.base import Base, TimestampedMixin, new_id, utcnow

# An experiment's status is derived from its runs' (store.experiments.derive_experiment_status).
EXPERIMENT_STATUSES = RUN_STATUSES


class User(Base):
    """Someone who holds tokens and owns experiments and studies (admin is a grant of a
    token, ``ApiToken.is_admin``, never of the user)."""

    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ApiToken(Base):
    """A bearer token, stored as its SHA-256 (the token itself is shown once, never kept).

    Tokens are 256 random bits, so a fast hash is enough: nothing can be guessed from it.
    """

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # the token's first characters, so `gradlab token list` can tell tokens apart
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # A request with this token sees everyone's work. Granted per token (`gradlab token create
    # --admin`), so granting it never widens a user's other tokens, and revoked on its own
    # (`gradlab token revoke-admin`) without taking the token away.
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    user: Mapped[User] = relationship(lazy="raise")


class Study(TimestampedMixin, Base):
    __tablename__ = "studies"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), index=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    # NULL: made with auth off (the single user); with auth on only admins see it.
    owner_id: Mapped[str | None] = mapped_column(ForeignKey("users.id"), index=True)

    cells: Mapped[list[StudyCell]] = relationship(
        back_populates="study", cascade="all, delete-orphan", order_by="StudyCell.position",
        lazy="raise", passive_deletes=True,
    )


class Experiment(TimestampedMixin, Base):
    __tablename__ = "experiments"
    __table_args__ = (
        CheckConstraint(f"status IN {EXPERIMENT_STATUSES}", name="status_valid"),
        Index("ix_experiments_created_at_id", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), index=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    # sha256 of the canonical spec JSON without seeds: a study cell with the same hash is reused.
    spec_hash: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    cancel_requested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # NULL: made with auth off (the single user); with auth on only admins see it.
    owner_id: Mapped[str | None] = mapped_column(ForeignKey("users.id"), index=True)

    runs: Mapped[list[Run]] = relationship(
        back_populates="experiment", cascade="all, delete-orphan", order_by="Run.seed",
        lazy="raise", passive_deletes=True,
    )


class StudyCell(Base):
    __tablename__ = "study_cells"
    __table_args__ = (UniqueConstraint("study_id", "experiment_id"),)

    study_id: Mapped[str] = mapped_column(
        ForeignKey("studies.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    experiment_id: Mapped[str] = mapped_column(ForeignKey("experiments.id"), index=True)
    # the grid coordinates of this cell, e.g. {"depth": 38, "batch_norm": true}
    coordinates: Mapped[dict[str, Any]] = mapped_column(JSON)

    study: Mapped[Study] = relationship(back_populates="cells", lazy="raise")
    experiment: Mapped[Experiment] = relationship(lazy="raise")


class Run(TimestampedMixin, Base):
    __tablename__ = "runs"
    __table_args__ = (
        UniqueConstraint("experiment_id", "seed"),
        CheckConstraint(f"status IN {RUN_STATUSES}", name="status_valid"),
        Index("ix_runs_status_lease_expires_at", "status", "lease_expires_at"),
        # the change feed's "runs changed since T" (server-sent events)
        Index("ix_runs_updated_at", "updated_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    experiment_id: Mapped[str] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), index=True
    )
    seed: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    queued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    epochs_done: Mapped[int] = mapped_column(Integer, default=0)
    # layer names in depth order: the order of the values in each gradflow_epochs array
    layers: Mapped[list[str] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    # versions, device, git revision, dataset checksum: the reproducibility record
    environment: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    test_loss: Mapped[float | None] = mapped_column(Float)
    test_acc: Mapped[float | None] = mapped_column(Float)
    best_epoch: Mapped[int | None] = mapped_column(Integer)
    diverged_epoch: Mapped[int | None] = mapped_column(Integer)
    diverged_step: Mapped[int | None] = mapped_column(Integer)
    # The fused pack its last attempt trained in (gradlab.store.runs.claim_companions); NULL
    # when that attempt trained it alone.
    pack: Mapped[str | None] = mapped_column(String(64))

    experiment: Mapped[Experiment] = relationship(back_populates="runs", lazy="raise")

    @property
    def precision(self) -> str | None:
        """What the run computes in (fp32, bf16), from its reproducibility record; None before
        a worker has resolved the spec's choice."""
        value = (self.environment or {}).get("precision")
        return value if isinstance(value, str) else None


class EpochMetricsRow(Base):
    __tablename__ = "epoch_metrics"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    train_loss: Mapped[float] = mapped_column(Float)
    train_acc: Mapped[float] = mapped_column(Float)
    val_loss: Mapped[float] = mapped_column(Float)
    val_acc: Mapped[float] = mapped_column(Float)
    lr: Mapped[float] = mapped_column(Float)
    seconds: Mapped[float] = mapped_column(Float)
    # written in the epoch's transaction (a re-delivered epoch moves it): a resumed event
    # stream replays the epochs recorded after the last event its client saw
    recorded_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=utcnow)


class GradFlowEpochRow(Base):
    """One epoch of one run's gradient flow: three statistics in two windows (last batch,
    epoch mean), each a float64 array with a value per layer in depth order (``runs.layers``),
    packed by ``gradlab.store.float_arrays``."""

    __tablename__ = "gradflow_epochs"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_batch_mean_abs: Mapped[bytes] = mapped_column(LargeBinary)
    last_batch_max_abs: Mapped[bytes] = mapped_column(LargeBinary)
    last_batch_l2: Mapped[bytes] = mapped_column(LargeBinary)
    epoch_mean_mean_abs: Mapped[bytes] = mapped_column(LargeBinary)
    epoch_mean_max_abs: Mapped[bytes] = mapped_column(LargeBinary)
    epoch_mean_l2: Mapped[bytes] = mapped_column(LargeBinary)


class Checkpoint(Base):
    """The reference to a run's latest committed checkpoint: where its bytes are (``store``,
    ``key``; see ``gradlab.store.checkpoint_store``), their size and SHA-256. Written in the
    transaction of the epoch it saves, after the bytes."""

    __tablename__ = "checkpoints"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer)
    store: Mapped[str] = mapped_column(String(16))
    key: Mapped[str] = mapped_column(String(300))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class CheckpointObject(Base):
    """Checkpoint bytes when the store is the database (a few MB for VGG38 with Adam state)."""

    __tablename__ = "checkpoint_objects"

    key: Mapped[str] = mapped_column(String(300), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
