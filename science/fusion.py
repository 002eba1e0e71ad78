"""Which runs can train as one fused pack (torch-free: the worker's store queries use it).

Runs fuse when their networks and their step shapes are the same: depth, width, BatchNorm,
residual skips, classes, batch size, epochs (the pack trains in lockstep), data (the same
split and the same number of steps per epoch) and precision (one fused forward computes in one
precision, so runs that differ only in precision never pack). Everything else is per run
inside a pack: seed (initialisation, data order, augmentation), optimiser, learning rate and
its schedule, weight decay.
"""

from __future__ import annotations

import hashlib
import json

from gradlab.science.spec import ExperimentSpec

# Hyperparameters each run of a pack keeps for itself (its own optimiser and schedule).
PER_RUN_HYPERPARAMETERS = frozenset({
    "optimizer", "learning_rate", "weight_decay", "lr_schedule", "min_learning_rate",
    "momentum", "nesterov", "adam_betas", "adam_eps",
})


def fusion_fields(spec: ExperimentSpec) -> dict[str, object]:
    """The part of ``spec`` that runs of one pack share."""
    dump = spec.model_dump(mode="json", exclude={"name", "seeds"})
    hp = dump.pop("hyperparameters")
    dump["hyperparameters"] = {k: v for k, v in hp.items() if k not in PER_RUN_HYPERPARAMETERS}
    return dump


def fusion_key(spec: ExperimentSpec) -> str:
    """A short digest of ``fusion_fields``: runs with equal keys can be packed together."""
    canonical = json.dumps(fusion_fields(spec), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
