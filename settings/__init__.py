"""Settings read from GRADLAB_* environment variables (pydantic-settings).

Shared by api, worker and client.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GRADLAB_", extra="ignore")

    # SQLite file by default (embedded mode); postgresql+psycopg://... in a cluster.
    database_url: str = "sqlite:///./gradlab.db"
    # None = embedded mode (no broker: a local worker process drives the same task function).
    broker_url: str | None = None
    data_dir: Path | None = None
    # False (the embedded single-user default): no tokens, every request sees everything.
    # True (the deployment default): bearer tokens on every route but health and metrics.
    auth_required: bool = False
    # A run whose lease expired (no heartbeat for this long) is presumed lost and re-enqueued.
    lease_seconds: int = 300
    max_attempts: int = 3
    # Above the longest run, so Redis never redelivers a still-running task (it would anyway be
    # refused by the database lease, but this avoids the churn).
    broker_visibility_timeout: int = 7 * 24 * 3600
    # The Celery queue runs are sent to and workers consume (one per cluster, or per test).
    celery_queue: str = "gradlab"
    device: str = "auto"
    # A worker told to stop (SIGTERM: an eviction, a rolling update) hands its run back within
    # this many seconds: at the end of the epoch when that comes in time, else at once (the
    # epoch in progress is redone from the last checkpoint). Keep it below the pod's
    # terminationGracePeriodSeconds (30 s by default).
    shutdown_grace_seconds: float = Field(20.0, gt=0)

    # --- limits on what a request may ask for (422/413/429 beyond them) ---
    max_request_bytes: int = Field(1024 * 1024, ge=1024)
    # cost of one experiment, estimated from its spec (gradlab.science.cost)
    max_parameters: int = Field(50_000_000, ge=1)
    max_activation_bytes: int = Field(32 * 2**30, ge=1)
    max_checkpoint_bytes: int = Field(512 * 2**20, ge=1)
    # cells and runs (cells x seeds) one study request may create
    max_study_cells: int = Field(256, ge=1)
    max_study_runs: int = Field(1024, ge=1)
    # queued + running runs one user may have at once
    max_active_runs_per_user: int = Field(1000, ge=1)

    @field_validator("database_url")
    @classmethod
    def _psycopg3_driver(cls, url: str) -> str:
        # Accept the common postgres:// and postgresql:// spellings; we ship psycopg 3.
        for prefix in ("postgres://", "postgresql://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix) :]
        return url


@lru_cache
def get_settings() -> Settings:
    return Settings()
