"""A finding: its kind, the experiments it is about, a sentence, and its typed evidence."""

from __future__ import annotations

from pydantic import BaseModel

from gradlab.science.diagnostics.evidence import AnyEvidence, FindingKind
from gradlab.science.spec import ExperimentSpec


class ExperimentRef(BaseModel):
    """Which experiment a finding is about."""

    name: str
    depth: int
    batch_norm: bool
    residual: bool

    @classmethod
    def of(cls, spec: ExperimentSpec) -> ExperimentRef:
        assert spec.depth is not None  # a validated spec always has its depth filled in
        return cls(
            name=spec.name, depth=spec.depth, batch_norm=spec.batch_norm, residual=spec.residual
        )


class Finding(BaseModel):
    """One diagnosis: what, about which experiments, a sentence, and the numbers behind it.

    ``experiments`` in order: the cell (one-cell problems); the shallower, then the deeper
    sibling (degradation); for a fix, the problem's experiments, then the sibling that no longer
    has it.
    """

    kind: FindingKind
    experiments: list[ExperimentRef]
    sentence: str
    evidence: AnyEvidence
