"""Request and response models of the HTTP API (pydantic v2), with OpenAPI examples.

The request body of ``POST /experiments`` is :class:`gradlab.science.spec.ExperimentSpec` itself,
so the API and the CLI validate a spec by the same rules. Numbers that may be non-finite (a
diverged run's NaN gradient) are ``null`` in JSON.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gradlab.science.records import RunStatus

GradflowStat = Literal["mean_abs", "max_abs", "l2"]
GradflowWindow = Literal["last_batch", "epoch_mean"]

_ID = "4b0c5f7e-9a0d-4b7e-8d7e-2f1f6f3a9c11"
_RUN_ID = "0a8d3c55-2b51-4c1e-bd3c-6a2f0d8f2b90"


def _example(example: dict[str, Any]) -> ConfigDict:
    """A response model's OpenAPI example, as ``/docs`` shows it."""
    return ConfigDict(json_schema_extra={"examples": [example]})


class _Read(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class ErrorRead(BaseModel):
    type: str = Field(examples=["not_found"])
    detail: str = Field(examples=[f"experiment {_ID} not found"])


class FieldError(BaseModel):
    field: str = Field(examples=["depth"])
    reason: str = Field(examples=["depth must be 6k+2 for 3 stages; nearest: 32 or 38"])


class ValidationErrorRead(ErrorRead):
    type: str = Field(examples=["validation_error"])
    detail: str = Field(examples=["depth: depth must be 6k+2 for 3 stages; nearest: 32 or 38"])
    errors: list[FieldError]


class FinalTestRead(_Read):
    loss: float | None
    acc: float | None
    best_epoch: int | None


class RunBrief(_Read):
    id: str = Field(examples=[_RUN_ID])
    seed: int = Field(examples=[0])
    status: RunStatus = Field(examples=["queued"])


class RunRead(RunBrief):
    attempt: int = Field(examples=[1])
    epochs_done: int = Field(examples=[12])
    error: str | None = Field(None, description="the last error, if the run failed")
    worker: str | None = None
    queued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    heartbeat_at: datetime | None = None
    test: FinalTestRead | None = None
    diverged_epoch: int | None = None
    diverged_step: int | None = None
    pack: str | None = Field(
        None, examples=[None],
        description="the fused pack its last attempt trained in (runs of the same shape "
                    "trained as one model, GRADLAB_PACK_SIZE); null when trained alone")
    precision: Literal["fp32", "bf16"] | None = Field(
        None, examples=["bf16"],
        description="what the run computes in: the spec's hyperparameters.precision resolved "
                    "on its worker (auto: bf16 on CUDA and on CPUs with bf16 units, else "
                    "fp32); null until a worker has started it")


class ExperimentCreated(_Read):
    model_config = _example({
        "id": _ID,
        "status": "queued",
        "runs": [{"id": _RUN_ID, "seed": 0, "status": "queued"}],
    })

    id: str
    status: str
    runs: list[RunBrief]


class ExperimentListItem(_Read):
    id: str = Field(examples=[_ID])
    name: str = Field(examples=["vgg38-bn-res"])
    status: str = Field(examples=["running"])
    spec_hash: str
    created_at: datetime
    updated_at: datetime
    cancel_requested_at: datetime | None = None


class ProgressRead(BaseModel):
    runs: int
    runs_finished: int
    epochs_done: int = Field(description="epochs recorded, summed over the runs")
    epochs_planned: int = Field(description="the spec's epochs times the runs")
    current_train_loss: float | None = Field(
        None, description="training loss of the latest epoch an unfinished run recorded"
    )
    eta_seconds: float | None = Field(
        None,
        description="estimated seconds to the end: epochs left x mean epoch time, divided by "
        "the runs training now (null when finished or before the first epoch)",
    )


class ExperimentListRow(ExperimentListItem):
    progress: ProgressRead | None = None


class ExperimentPageRead(BaseModel):
    items: list[ExperimentListRow]
    next_cursor: str | None = Field(
        None, description="pass as ?cursor= for the next page; null on the last page"
    )


class MeanStd(BaseModel):
    mean: float | None
    std: float | None = Field(description="sample standard deviation (ddof=1); 0.0 when n is 1")
    n: int


class SummaryRead(BaseModel):
    model_config = _example({
        "finished_seeds": 4,
        "metrics": {"test_acc": {"mean": 0.512, "std": 0.004, "n": 4}},
    })

    finished_seeds: int = Field(description="runs that succeeded; the summary is over these")
    precision: str | None = Field(
        None, examples=["bf16"],
        description="what the summarised seeds computed in: fp32, bf16, or 'mixed (bf16 x2, "
                    "fp32 x1)' when auto resolved differently on different workers")
    metrics: dict[str, MeanStd] = Field(
        description="test_loss, test_acc and final_* (last epoch) metrics across finished seeds"
    )


class ExperimentRead(ExperimentListItem):
    spec: dict[str, Any]
    runs: list[RunRead]
    summary: SummaryRead


class RunMetricsRead(BaseModel):
    seed: int
    status: str
    sampled: bool
    raw_count: int = Field(description="epochs recorded before sampling")
    epochs: list[int]
    train_loss: list[float | None]
    train_acc: list[float | None]
    val_loss: list[float | None]
    val_acc: list[float | None]
    lr: list[float | None]
    seconds: list[float | None]
    test: FinalTestRead | None


class AcrossSeedsMetricsRead(BaseModel):
    sampled: bool
    raw_count: int
    epochs: list[int]
    n: list[int] = Field(description="seeds that reached each epoch")
    mean: dict[str, list[float | None]]
    std: dict[str, list[float | None]]


class MetricsRead(BaseModel):
    model_config = _example({
        "experiment_id": _ID,
        "max_points": 2,
        "runs": [
            {
                "seed": 0,
                "status": "succeeded",
                "sampled": True,
                "raw_count": 3,
                "epochs": [0, 2],
                "train_loss": [4.1, 3.2],
                "train_acc": [0.06, 0.2],
                "val_loss": [3.9, 3.1],
                "val_acc": [0.09, 0.24],
                "lr": [0.001, 2e-5],
                "seconds": [41.0, 40.2],
                "test": {"loss": 3.1, "acc": 0.25, "best_epoch": 2},
            }
        ],
        "across_seeds": {
            "sampled": True,
            "raw_count": 3,
            "epochs": [0, 2],
            "n": [1, 1],
            "mean": {"val_acc": [0.09, 0.24]},
            "std": {"val_acc": [None, None]},
        },
    })

    experiment_id: str
    max_points: int | None
    runs: list[RunMetricsRead]
    across_seeds: AcrossSeedsMetricsRead


class GradflowRunRead(BaseModel):
    seed: int
    status: str
    epochs: list[int]
    values: list[list[float | None]] = Field(description="values[i][j]: layer j at epochs[i]")


class GradflowAcrossSeedsRead(BaseModel):
    epochs: list[int]
    n: list[int]
    mean: list[list[float | None]]
    std: list[list[float | None]]


class GradflowRead(BaseModel):
    model_config = _example({
        "experiment_id": _ID,
        "stat": "mean_abs",
        "window": "last_batch",
        "layers": ["entry.conv", "stage0.block0.conv1", "head.linear"],
        "runs": [
            {
                "seed": 0,
                "status": "running",
                "epochs": [0, 1],
                "values": [[0.041, 0.02, 0.3], [0.038, 0.019, 0.28]],
            }
        ],
        "across_seeds": {
            "epochs": [0, 1],
            "n": [1, 1],
            "mean": [[0.041, 0.02, 0.3], [0.038, 0.019, 0.28]],
            "std": [[None, None, None], [None, None, None]],
        },
    })

    experiment_id: str
    stat: GradflowStat
    window: GradflowWindow
    layers: list[str]
    runs: list[GradflowRunRead]
    across_seeds: GradflowAcrossSeedsRead


class FindingRead(BaseModel):
    kind: str = Field(examples=["vanishing_gradients"])
    experiments: list[dict[str, Any]]
    sentence: str = Field(
        examples=["vgg38: gradients vanish: 37 of 39 layers below 1e-08 (entry conv 1.8e-18)"]
    )
    evidence: dict[str, Any]


class DiagnosticsRead(BaseModel):
    experiment_id: str
    epochs_read: int = Field(description="the most epochs any seed has recorded")
    findings: list[FindingRead]


class HealthRead(BaseModel):
    status: Literal["ok"] = "ok"


class ReadinessRead(BaseModel):
    status: Literal["ready", "not_ready"]
    checks: dict[str, str] = Field(
        description='per dependency: "ok", "unreachable" or "not used (embedded mode)"',
        examples=[{"database": "ok", "broker": "not used (embedded mode)"}],
    )
