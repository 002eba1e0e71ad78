"""Diagnostics: what went wrong in a study and what fixed it, in words with numbers.

Every diagnostic reads the across-seed means (:mod:`gradlab.science.aggregate`) of one cell, or
of two *sibling* cells (the same configuration except one field), and every threshold is a
named setting in :class:`DiagnosticSettings`. Kinds (each module says its rule):

- ``vanishing_gradients``, ``exploding_gradients``: :mod:`.gradients`;
- ``not_training``, ``overfitting``: :mod:`.curves`;
- ``degradation``: :mod:`.siblings`;
- ``fix``: :mod:`.fixes`.

Detection, evidence and words are apart: a detector returns typed evidence
(:mod:`.evidence`), :mod:`.sentences` writes the sentence from it, and :mod:`.table` holds the
detectors and :func:`diagnose`.
"""

from gradlab.science.diagnostics.curves import prior_fit_gain
from gradlab.science.diagnostics.evidence import AnyEvidence, FindingKind
from gradlab.science.diagnostics.findings import ExperimentRef, Finding
from gradlab.science.diagnostics.settings import DiagnosticSettings
from gradlab.science.diagnostics.table import (
    degradations,
    diagnose,
    exploding_gradients,
    not_training,
    overfitting,
    vanishing_gradients,
)

__all__ = [
    "AnyEvidence",
    "DiagnosticSettings",
    "ExperimentRef",
    "Finding",
    "FindingKind",
    "degradations",
    "diagnose",
    "exploding_gradients",
    "not_training",
    "overfitting",
    "prior_fit_gain",
    "vanishing_gradients",
]
