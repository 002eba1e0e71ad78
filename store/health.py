"""Cheap questions the service's health and metrics routes ask the database."""

from __future__ import annotations

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from gradlab.store.models import Experiment, Run


def ping(session: Session) -> None:
    """A round trip to the database; raises when it does not answer."""
    session.execute(text("SELECT 1"))


def count_by_status(session: Session) -> tuple[dict[str, int], dict[str, int]]:
    """(runs by status, experiments by status), statuses with none left out."""
    runs = dict(session.execute(select(Run.status, func.count()).group_by(Run.status)).all())
    experiments = dict(
        session.execute(select(Experiment.status, func.count()).group_by(Experiment.status)).all()
    )
    return runs, experiments
