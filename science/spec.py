"""The experiment spec: the one contract shared by the CLI, the API, the worker and the store.

Defaults are the seed study's (Adam 1e-3, cosine to 2e-5, batch 100, 100 epochs, width 32).
Unknown fields are rejected so that a typo never silently trains the default.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gradlab.science.bounds import INT32_MAX, Flag, RealNumber, StorableText, WholeNumber

STAGES = 3
MIN_DEPTH = 2 + 2 * STAGES  # entry conv + head + one reduction block per stage = 8
# The deepest model a spec may ask for (32 blocks per stage). Every view and the report are
# checked at this depth (tests/science/test_spec_bounds.py); past it the gradient-flow figure's
# layer axis no longer reads, and the cost limits refuse wide ones anyway.
MAX_BLOCKS_PER_STAGE = 32
# depth and blocks_per_stage describe the same thing: setting one clears the other.
DEPTH_FIELDS = {"depth": "blocks_per_stage", "blocks_per_stage": "depth"}
MAX_SEEDS = 64


def depth_for_blocks(blocks_per_stage: int) -> int:
    """Depth (conv + linear layers) of a 3-stage VGG with this many processing blocks per stage."""
    return 2 + 2 * STAGES * (blocks_per_stage + 1)


MAX_DEPTH = depth_for_blocks(MAX_BLOCKS_PER_STAGE)  # 200


def blocks_for_depth(depth: int) -> int:
    """Inverse of :func:`depth_for_blocks`; raises ValueError naming the nearest valid depths."""
    step = 2 * STAGES
    if depth < MIN_DEPTH:
        raise ValueError(f"depth must be at least {MIN_DEPTH} for {STAGES} stages")
    if depth > MAX_DEPTH:
        raise ValueError(f"depth must be at most {MAX_DEPTH}")
    if (depth - 2) % step != 0:
        lower = depth - (depth - 2) % step
        upper = lower + step
        nearest = f"{lower} or {upper}" if lower >= MIN_DEPTH else f"{upper}"
        raise ValueError(f"depth must be {step}k+2 for {STAGES} stages; nearest: {nearest}")
    return (depth - 2) // step - 1


class _Strict(BaseModel):
    # allow_inf_nan=False: NaN, Infinity and literals that overflow to them are refused.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


AdamBeta = Annotated[RealNumber, Field(ge=0, lt=1, allow_inf_nan=False)]
Seed = Annotated[WholeNumber, Field(ge=0, le=INT32_MAX)]


class Hyperparameters(_Strict):
    """Optimiser and schedule settings of one experiment."""

    optimizer: Literal["adam", "sgd"] = "adam"
    learning_rate: RealNumber = Field(1e-3, gt=0, le=10)
    weight_decay: RealNumber = Field(0.0, ge=0, le=1)
    batch_size: WholeNumber = Field(100, ge=1, le=8192)
    epochs: WholeNumber = Field(100, ge=1, le=10_000)
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    min_learning_rate: RealNumber = Field(2e-5, ge=0, le=10)
    momentum: RealNumber = Field(0.9, ge=0, lt=1, description="SGD only")
    nesterov: Flag = Field(False, description="SGD only")
    adam_betas: tuple[AdamBeta, AdamBeta] = (0.9, 0.999)
    adam_eps: RealNumber = Field(1e-8, gt=0, le=1)
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 autocast on CUDA and on CPUs with bf16 units, else fp32"
    )

    @model_validator(mode="after")
    def _min_below_max(self) -> Self:
        if self.lr_schedule == "cosine" and self.min_learning_rate > self.learning_rate:
            raise ValueError("min_learning_rate must not exceed learning_rate")
        return self


# Training images of the fixed split (the rest of the 50,000 are the validation set).
TRAIN_SPLIT_SIZE = 47_500


class DataSpec(_Strict):
    """Which data set and how much of it (limits are for quick runs; null means all)."""

    dataset: Literal["cifar100", "cifar10"] = "cifar100"
    train_limit: WholeNumber | None = Field(None, ge=1, le=TRAIN_SPLIT_SIZE)
    val_limit: WholeNumber | None = Field(None, ge=1, le=2_500)
    test_limit: WholeNumber | None = Field(None, ge=1, le=10_000)
    augment: Flag = True


class ExperimentSpec(_Strict):
    """One configuration (model + hyperparameters + data) and the seeds to run it with."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        allow_inf_nan=False,
        json_schema_extra={
            "examples": [
                {
                    "name": "vgg38-bn-res",
                    "depth": 38,
                    "width": 32,
                    "batch_norm": True,
                    "residual": True,
                    "hyperparameters": {"learning_rate": 0.001, "weight_decay": 0.001},
                    "data": {"dataset": "cifar100", "train_limit": None},
                    "seeds": [0, 256, 512, 1024],
                }
            ]
        },
    )

    name: StorableText = Field("experiment", min_length=1, max_length=200)
    depth: WholeNumber | None = Field(
        None, ge=MIN_DEPTH, le=MAX_DEPTH, description="6k+2 for 3 stages: 8, 14, ..., 38, ..., 200"
    )
    blocks_per_stage: WholeNumber | None = Field(None, ge=0, le=MAX_BLOCKS_PER_STAGE)
    width: WholeNumber = Field(32, ge=1, le=1024)
    batch_norm: Flag = False
    residual: Flag = False
    reduction_skip: Literal["none", "avgpool"] = Field(
        "avgpool", description="identity skip over reduction blocks (residual only)"
    )
    hyperparameters: Hyperparameters = Hyperparameters()
    data: DataSpec = DataSpec()
    seeds: list[Seed] = Field(default_factory=lambda: [0], min_length=1, max_length=MAX_SEEDS)

    @field_validator("depth")
    @classmethod
    def _depth_is_valid(cls, depth: int | None) -> int | None:
        if depth is not None:
            blocks_for_depth(depth)
        return depth

    @field_validator("seeds")
    @classmethod
    def _seeds_are_distinct(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError("seeds must be distinct")
        return seeds

    @model_validator(mode="after")
    def _fill_depth(self) -> Self:
        # depth and blocks_per_stage describe the same thing; keep both filled and consistent.
        if self.depth is None and self.blocks_per_stage is None:
            object.__setattr__(self, "depth", 38)
        if self.depth is None:
            assert self.blocks_per_stage is not None
            object.__setattr__(self, "depth", depth_for_blocks(self.blocks_per_stage))
        elif self.blocks_per_stage is None:
            object.__setattr__(self, "blocks_per_stage", blocks_for_depth(self.depth))
        elif depth_for_blocks(self.blocks_per_stage) != self.depth:
            raise ValueError(
                f"depth {self.depth} disagrees with blocks_per_stage {self.blocks_per_stage} "
                f"(which gives depth {depth_for_blocks(self.blocks_per_stage)})"
            )
        return self

    @property
    def num_blocks(self) -> int:
        assert self.blocks_per_stage is not None
        return self.blocks_per_stage

    @property
    def num_classes(self) -> int:
        return 100 if self.data.dataset == "cifar100" else 10

    @property
    def model_family(self) -> str:
        """``vgg38-bn-res``: depth and the two switches, a label with few values (metrics are
        labelled by it, never by run ids)."""
        return (
            f"vgg{self.depth:02d}"
            + ("-bn" if self.batch_norm else "")
            + ("-res" if self.residual else "")
        )

    def with_updates(self, updates: Mapping[str, object]) -> ExperimentSpec:
        """A validated copy with dotted-path fields replaced.

        Example: ``spec.with_updates({"hyperparameters.weight_decay": 1e-3})``.
        """
        return ExperimentSpec.model_validate(apply_dotted_updates(self.model_dump(), updates))


def apply_dotted_updates(data: Mapping[str, Any], updates: Mapping[str, object]) -> dict[str, Any]:
    """A copy of a (partial) spec mapping with dotted-path fields set, e.g.
    ``{"hyperparameters.weight_decay": 1e-3}``; missing sections are created. Setting ``depth``
    or ``blocks_per_stage`` clears the other, since they describe the same thing."""
    result = copy.deepcopy(dict(data))
    for path, value in updates.items():
        node = result
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
        if leaf in DEPTH_FIELDS:
            result.pop(DEPTH_FIELDS[leaf], None)
    return result
