"""What the client returns: typed views of the API's JSON.

Tolerant readers: unknown fields are kept (``extra="allow"``), so a newer server (an owner
field, say) never breaks an older client; the fields named here are the ones it relies on.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from gradlab.science.records import TERMINAL_RUN_STATUSES


class _Read(BaseModel):
    model_config = ConfigDict(extra="allow")


class RunBrief(_Read):
    id: str
    seed: int
    status: str


class Run(RunBrief):
    attempt: int = 0
    epochs_done: int = 0
    error: str | None = None
    test: dict[str, Any] | None = None

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_RUN_STATUSES


class ExperimentItem(_Read):
    id: str
    name: str
    status: str
    created_at: datetime
    updated_at: datetime


class Experiment(ExperimentItem):
    spec: dict[str, Any]
    runs: list[Run]
    summary: dict[str, Any] = Field(default_factory=dict)

    @property
    def epochs_planned(self) -> int:
        return int(self.spec.get("hyperparameters", {}).get("epochs", 0))


class ExperimentCreated(_Read):
    id: str
    status: str
    runs: list[RunBrief]


class StudyCreated(_Read):
    id: str
    name: str
    created: bool
    cells: int
    runs_queued: int


class StudyItem(_Read):
    id: str
    name: str
    scale: str
    cells: int
    created_at: datetime


class SeedCompletion(_Read):
    seed: int
    run_id: str | None
    status: str
    epochs_done: int
    epochs_planned: int | None


class Cell(_Read):
    position: int
    name: str
    experiment_id: str
    coordinates: dict[str, Any]
    seeds: list[SeedCompletion]


class Study(_Read):
    id: str
    name: str
    scale: str
    runs_planned: int
    runs_finished: int
    cells: list[Cell]


class Gradflow(_Read):
    experiment_id: str
    stat: str
    window: str
    layers: list[str]
    runs: list[dict[str, Any]]
    across_seeds: dict[str, Any]


class Event(BaseModel):
    """One server-sent event: ``snapshot``, ``epoch``, ``status`` or ``end``."""

    id: str | None
    event: str
    data: dict[str, Any]
