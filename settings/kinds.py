"""The settings of each process kind, read from GRADLAB_* variables (pydantic-settings).

- :class:`ServerSettings`: what every server process reads (the database, the broker and its
  queue, the checkpoint store, logs); ``gradlab migrate`` and ``gradlab token`` read only it.
- :class:`ApiSettings`: the API (auth, events, request and cost limits, renders).
- :class:`WorkerSettings`: the worker and the reaper, and the local verbs that train
  (``gradlab train``, ``gradlab study run``, ``gradlab data download``).
- :class:`ClientSettings`: the HTTP client (``GradlabClient``, the remote verbs).

A process builds only its own kind (``gradlab serve`` and ``gradlab study run``, the API and
a worker in one command, build both), and refuses to start on a GRADLAB_ variable it cannot
use (:class:`~gradlab.settings.refusal.UnusableSettingError`): an unknown name always; the
server kinds let one another's names pass, because a deployment hands one set of variables to
all its server containers (compose's env file, the chart's ConfigMap), and refuse the
client's; the client refuses every server name. docs/settings.md lists who reads what.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from gradlab.settings.refusal import PREFIX, UnusableSettingError, refused


class GradlabSettings(BaseSettings):
    """GRADLAB_* settings of one process kind; other GRADLAB_ variables are refused."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="ignore")
    # as messages name this kind
    kind: ClassVar[str] = "this process"

    @classmethod
    def names(cls) -> frozenset[str]:
        """The GRADLAB_ variables this kind reads."""
        return frozenset(f"{PREFIX}{field.upper()}" for field in cls.model_fields)

    @classmethod
    def tolerated(cls) -> frozenset[str]:
        """Other kinds' variables this kind lets pass without reading them."""
        return frozenset()

    @classmethod
    def unusable(cls, environ: Mapping[str, str]) -> list[str]:
        """Why each GRADLAB_ variable of ``environ`` that this kind cannot use is refused."""
        return refused(environ, kind=cls.kind, own=cls.names(), tolerated=cls.tolerated(),
                       readers=readers())

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (_RefuseUnusable(settings_cls), init_settings, env_settings, dotenv_settings,
                file_secret_settings)


class _RefuseUnusable(PydanticBaseSettingsSource):
    """Reads nothing: raises UnusableSettingError when the environment holds a GRADLAB_
    variable the kind being built cannot use."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        kind = self.settings_cls
        assert issubclass(kind, GradlabSettings)
        problems = kind.unusable(os.environ)
        if problems:
            raise UnusableSettingError(kind.kind, problems)
        return {}


class ServerSettings(GradlabSettings):
    """What every server process reads: the API, the worker, the reaper, migrate, token."""

    kind: ClassVar[str] = "a server process"

    # SQLite file by default (embedded mode); postgresql+psycopg://... in a cluster.
    database_url: str = "sqlite:///./gradlab.db"
    # Connection pool of each process (API, worker child, reaper): its steady connections and
    # the extra ones it may open in a burst. Behind PgBouncer these are client connections,
    # cheap; PgBouncer's default_pool_size bounds the server connections (docs/scale.md).
    database_pool_size: int = Field(5, ge=1, le=1000)
    database_max_overflow: int = Field(10, ge=0, le=1000)
    # "pgbouncer": the URL points at PgBouncer in transaction-pooling mode, so no server-side
    # prepared statements (the next transaction may run on another server connection).
    database_pooler: Literal["none", "pgbouncer"] = "none"
    # None = embedded mode (no broker: a local worker process drives the same task function).
    broker_url: str | None = None
    # Above the longest run, so Redis never redelivers a still-running task (it would anyway be
    # refused by the database lease, but this avoids the churn).
    broker_visibility_timeout: int = 7 * 24 * 3600
    # The Celery queue runs are sent to and workers consume (one per cluster, or per test).
    celery_queue: str = "gradlab"
    # Where checkpoint bytes live: "database" (the embedded default), a folder (a path or
    # file:///path: a shared volume), or s3://bucket/prefix (S3, MinIO, GCS interoperability;
    # credentials from the usual AWS_* variables). The database keeps only the reference; the
    # API deletes an experiment's checkpoints with it.
    checkpoint_store: str = "database"
    # An S3-compatible endpoint other than AWS's (MinIO, GCS), and its region.
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    # Logs of the API and the worker: one JSON object per line, or plain text for a terminal.
    log_format: Literal["json", "text"] = "json"
    log_level: str = "INFO"

    @classmethod
    def tolerated(cls) -> frozenset[str]:
        # One deployment hands the same variables to every server container.
        return ApiSettings.names() | WorkerSettings.names()

    @field_validator("database_url")
    @classmethod
    def _psycopg3_driver(cls, url: str) -> str:
        # Accept the common postgres:// and postgresql:// spellings; we ship psycopg 3.
        for prefix in ("postgres://", "postgresql://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix) :]
        return url


class ApiSettings(ServerSettings):
    """The API's settings (``gradlab api``, the API of ``gradlab serve``)."""

    kind: ClassVar[str] = "the API"

    # False (the embedded single-user default): no tokens, every request sees everything.
    # True (the deployment default): bearer tokens on every route but health and metrics.
    auth_required: bool = False
    # An admin token the operator chose (a Kubernetes Secret): the API registers it for the
    # user "admin" when it starts, so a fresh deployment has a first token without a shell.
    admin_token: str | None = Field(None, min_length=32)
    # Server-sent events: each API process reads "runs changed since" once per poll for all
    # its streams; a resumed stream replays from the last event's time minus the overlap
    # (above the writers' clock skew plus the longest epoch transaction); idle streams get a
    # comment line every heartbeat so proxies keep them open.
    events_poll_seconds: float = 1.0
    events_overlap_seconds: float = 10.0
    events_heartbeat_seconds: float = 15.0
    # The most runs one poll reads forward (and again behind, sweeping the overlap): more
    # changes than this at once delay the feed by a poll per batch, never stop it.
    events_poll_batch: int = Field(10_000, ge=1)
    # An open stream asks this often whether its token still stands (not revoked, admin grant
    # kept) and still sees what it follows; if not, it ends.
    events_auth_recheck_seconds: float = Field(5.0, gt=0)

    # --- limits on what a request may ask for (422/413/429 beyond them); the service layer
    # applies them, so `gradlab study run` reads them too ---
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
    # Views rendered at once per user on a cache miss (a gradient-flow PNG above all), and how
    # many more may wait; beyond that 429 with Retry-After. One user's renders then hold at
    # most this many of the API's threads, and the plot lock is taken in turn.
    render_concurrency_per_user: int = Field(2, ge=1, le=64)
    render_backlog_per_user: int = Field(16, ge=0, le=10_000)


class WorkerSettings(ServerSettings):
    """The worker's settings (``gradlab worker``, ``gradlab reaper``, the local worker of
    ``gradlab serve``, and ``gradlab train``, ``study run``, ``data download``)."""

    kind: ClassVar[str] = "the worker"

    data_dir: Path | None = None
    # Where `gradlab train`, `gradlab study run` and `gradlab data download` fetch the CIFAR
    # archives when the data folder has none: the folder URL of a mirror holding
    # cifar-100-python.tar.gz (cifar-10-python.tar.gz). Unset: the official site. The MD5 is
    # always the official one.
    cifar_url: str | None = None
    device: str = "auto"
    # A run whose lease expired (no heartbeat for this long) is presumed lost and re-enqueued.
    lease_seconds: int = 300
    max_attempts: int = 3
    # A worker that claims a run also claims up to this many runs in all that can train with
    # it as one fused pack (same model, batch size, epochs and data, at the same epoch):
    # gradlab.store.runs.claim_companions. 1 turns packing off. Unset: 4 on a GPU and 1 on the
    # CPU, where packs measured slower than the same runs one after another (README, "Fused
    # packs").
    pack_size: int | None = Field(None, ge=1, le=64)
    # How a worker shares each GPU between runs (docs/gpu.md): "packs" (one child per GPU, which
    # trains runs of the same shape as one fused model of up to pack_size runs) or "processes"
    # (processes_per_gpu children per GPU, each training one run: pack size 1 unless pack_size
    # is set). Packs until a GPU measurement says otherwise: `bash scripts/gpu_check.sh
    # measure` times both on a card and prints the setting that won.
    gpu_sharing: Literal["packs", "processes"] = "packs"
    # Children per GPU with gpu_sharing="processes" (ignored with packs).
    processes_per_gpu: int = Field(4, ge=1, le=64)
    # `gradlab worker` serves its Prometheus metrics (epoch times, heartbeats) on this port.
    worker_metrics_port: int | None = None
    # On a GPU a checkpoint is written at most this often (on the CPU every epoch), and always
    # at the end, at cancel and at shutdown. 0: every epoch everywhere.
    checkpoint_seconds: float = Field(60.0, ge=0)
    # A worker told to stop (SIGTERM: an eviction, a rolling update) hands its run back within
    # this many seconds: at the end of the epoch when that comes in time, else at once (the
    # epoch in progress is redone from the last checkpoint). Keep it below the pod's
    # terminationGracePeriodSeconds (30 s by default).
    shutdown_grace_seconds: float = Field(20.0, gt=0)


class ClientSettings(GradlabSettings):
    """The HTTP client's settings (``GradlabClient``, the remote verbs of ``gradlab``): no
    database, broker or training setting."""

    kind: ClassVar[str] = "the client"

    # The server (GRADLAB_URL) and the bearer token (GRADLAB_TOKEN) the client sends.
    url: str = "http://127.0.0.1:8000"
    token: str | None = None


KINDS: tuple[type[GradlabSettings], ...] = (ApiSettings, WorkerSettings, ClientSettings)


@lru_cache
def readers() -> dict[str, list[str]]:
    """Each GRADLAB_ setting and the process kinds that read it."""
    found: dict[str, list[str]] = {}
    for kind in KINDS:
        for name in sorted(kind.names()):
            found.setdefault(name, []).append(kind.kind)
    return found


@lru_cache
def get_api_settings() -> ApiSettings:
    return ApiSettings()


@lru_cache
def get_worker_settings() -> WorkerSettings:
    return WorkerSettings()


@lru_cache
def get_client_settings() -> ClientSettings:
    return ClientSettings()


def clear_cached() -> None:
    """Forget the settings read so far (after this process changed its environment)."""
    for getter in (get_api_settings, get_worker_settings, get_client_settings):
        getter.cache_clear()
