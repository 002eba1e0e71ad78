"""Settings read from GRADLAB_* environment variables (pydantic-settings).

Shared by api, worker and client.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GRADLAB_", extra="ignore")

    # SQLite file by default (embedded mode); postgresql+psycopg://... in a cluster.
    database_url: str = "sqlite:///./gradlab.db"
    # None = embedded mode (no broker: a local worker process drives the same task function).
    broker_url: str | None = None
    data_dir: Path | None = None
    auth_enabled: bool = False
    # A run whose lease expired (no heartbeat for this long) is presumed lost and re-enqueued.
    lease_seconds: int = 300
    max_attempts: int = 3
    # Above the longest run, so Redis never redelivers a still-running task (it would anyway be
    # refused by the database lease, but this avoids the churn).
    broker_visibility_timeout: int = 7 * 24 * 3600
    # The Celery queue runs are sent to and workers consume (one per cluster, or per test).
    celery_queue: str = "gradlab"
    device: str = "auto"

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
