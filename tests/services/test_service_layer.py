"""The service layer is the one place a rule is written: `gradlab study run`'s local path
meets the API's limits (cost, run cap) before anything is stored, and no relation of a model
ever loads lazily (a read that forgets to load it fails loudly, never with a hidden SELECT)."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.orm import Session, sessionmaker

from gradlab.science.spec import ExperimentSpec
from gradlab.services.errors import TooManyRunsError
from gradlab.services.experiments import submit_experiment
from gradlab.settings import ApiSettings
from gradlab.store.experiments import create_experiment, get_experiment
from gradlab.store.models import ApiToken, Experiment, Study
from gradlab.store.session import make_engine, make_session_factory, session_scope
from gradlab.store.users import EVERYONE
from tests.support.processes import VENV_BIN


def _study_file(tmp_path: Path, seeds: list[int]) -> Path:
    path = tmp_path / "study.json"
    path.write_text(json.dumps({
        "name": f"cli-{uuid.uuid4().hex[:6]}",
        "base": {"depth": 8, "width": 8, "hyperparameters": {"epochs": 1}},
        "grid": {"batch_norm": [False, True]},
        "seeds": seeds,
    }))
    return path


def _study_run(study: Path, out: Path, **limits: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADLAB_")}
    env |= {f"GRADLAB_{k.upper()}": v for k, v in limits.items()}
    return subprocess.run(
        [str(VENV_BIN / "gradlab"), "study", "run", str(study), "--scale", "smoke",
         "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=300,
    )


def _studies(url: str) -> int:
    engine = make_engine(url)
    try:
        with make_session_factory(engine)() as session:
            return len(session.scalars(select(Study.id)).all())
    finally:
        engine.dispose()


def test_study_run_meets_the_cost_limits_before_anything_is_stored(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = _study_run(_study_file(tmp_path, [0]), out, max_parameters="1000")
    assert result.returncode == 2, result.stdout + result.stderr
    text = " ".join((result.stdout + result.stderr).split())
    assert "cost.parameters" in text and "GRADLAB_MAX_PARAMETERS" in text
    assert not (out / "gradlab.db").exists()


def test_study_run_meets_the_run_cap_before_anything_is_stored(tmp_path: Path) -> None:
    out = tmp_path / "out"
    # 2 cells x 2 seeds: 4 runs for a single user allowed 3
    result = _study_run(_study_file(tmp_path, [0, 1]), out, max_active_runs_per_user="3")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "GRADLAB_MAX_ACTIVE_RUNS_PER_USER" in " ".join((result.stdout + result.stderr).split())
    assert _studies(f"sqlite:///{out / 'gradlab.db'}") == 0


def test_the_run_cap_is_met_before_the_experiment_is_written(
    sqlite_url: str, sqlite_session_factory: sessionmaker[Session]
) -> None:
    name = f"cap-{uuid.uuid4().hex[:6]}"
    settings = ApiSettings(database_url=sqlite_url, max_active_runs_per_user=2)
    spec = ExperimentSpec(name=name, depth=8, width=8, seeds=[0, 1, 2])
    with session_scope(sqlite_session_factory) as session, pytest.raises(TooManyRunsError):
        submit_experiment(session, spec, viewer=EVERYONE, settings=settings)
        # refused before the insert: nothing is pending in the session either
    with sqlite_session_factory() as session:
        assert session.scalars(select(Experiment).where(Experiment.name == name)).all() == []


def test_a_lazy_load_fails_loudly(
    postgres_session_factory: sessionmaker[Session],
) -> None:
    with session_scope(postgres_session_factory) as session:
        experiment_id = create_experiment(session, ExperimentSpec(name="lazy", depth=8)).id
    with postgres_session_factory() as session:
        plain = session.scalars(select(Experiment).where(Experiment.id == experiment_id)).one()
        with pytest.raises(InvalidRequestError, match="lazy='raise'"):
            _ = plain.runs
    with postgres_session_factory() as session:
        token = session.scalars(select(ApiToken).limit(1)).first()
        if token is not None:
            with pytest.raises(InvalidRequestError, match="lazy='raise'"):
                _ = token.user
    with postgres_session_factory() as session:  # a read that says what it needs works
        loaded = get_experiment(session, experiment_id)
        assert loaded is not None and [r.seed for r in loaded.runs] == [0]
