"""The cost limit at submission: what an experiment would need, estimated from its spec, against
the service's bounds (``GRADLAB_MAX_PARAMETERS``, ``GRADLAB_MAX_ACTIVATION_BYTES``,
``GRADLAB_MAX_CHECKPOINT_BYTES``).

A spec inside every field's bounds can still never run (width 1024 at batch 8192: terabytes of
activations, a checkpoint past PostgreSQL's 1 GB value limit). Such a spec is refused when it
is submitted, naming the limit and by how much it is exceeded, instead of failing days later.
"""

from __future__ import annotations

from dataclasses import dataclass

from gradlab.science.layers import activation_bytes, checkpoint_bytes, parameter_count
from gradlab.science.spec import ExperimentSpec


@dataclass(frozen=True)
class CostLimits:
    max_parameters: int
    max_activation_bytes: int
    max_checkpoint_bytes: int


# One limit a spec exceeds: which (its field), and a sentence with the figures; the
# ``(field, reason)`` pair a 422 lists per problem.
CostExcess = tuple[str, str]


def _size(n: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def _count(n: float) -> str:
    return f"{n:,.0f}"


def cost_excesses(spec: ExperimentSpec, limits: CostLimits) -> list[CostExcess]:
    """Every limit the spec's estimated cost exceeds (empty when it fits)."""
    checks = (
        ("cost.parameters", "parameters", parameter_count(spec), limits.max_parameters,
         "GRADLAB_MAX_PARAMETERS", _count),
        ("cost.activation_memory",
         f"activation memory at batch size {spec.hyperparameters.batch_size}",
         activation_bytes(spec), limits.max_activation_bytes, "GRADLAB_MAX_ACTIVATION_BYTES",
         _size),
        ("cost.checkpoint_size", "checkpoint size", checkpoint_bytes(spec),
         limits.max_checkpoint_bytes, "GRADLAB_MAX_CHECKPOINT_BYTES", _size),
    )
    excesses = []
    for field, what, estimate, limit, setting, show in checks:
        if estimate > limit:
            excesses.append((
                field,
                f"{what} is about {show(estimate)}, over the limit of {show(limit)} "
                f"({setting}) by {show(estimate - limit)} ({estimate / limit:.1f}x)",
            ))
    return excesses
