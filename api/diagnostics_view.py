"""An experiment's diagnostics in words: the study diagnostics run on it as a one-cell study
(vanishing or exploding gradients, not training, overfitting), with the numbers behind each."""

from __future__ import annotations

import json

from sqlalchemy.orm import Session

from gradlab.api.response_cache import CachedResponse
from gradlab.science.diagnostics import diagnose
from gradlab.science.json_values import json_safe
from gradlab.store.models import Experiment
from gradlab.store.studies import experiment_result


def render_diagnostics(session: Session, experiment: Experiment) -> CachedResponse:
    cell = experiment_result(session, experiment)
    findings = [f.model_dump(mode="json") for f in diagnose([cell])]
    payload = {
        "experiment_id": experiment.id,
        "epochs_read": max((len(r.epochs) for r in cell.runs), default=0),
        "findings": json_safe(findings),
    }
    body = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
    return CachedResponse(body, "application/json")
