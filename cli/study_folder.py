"""The folder a study run on the embedded store lives in (``gradlab study run --out DIR``).

    DIR/gradlab.db      the SQLite database: the study, its runs, every epoch's metrics and
                        gradient flow, the references to the checkpoints
    DIR/checkpoints/    the checkpoints of unfinished runs, a folder per run
    DIR/report.html, DIR/report.json, DIR/figures/   the report
    DIR/report-timing.json   how long the report took to write (for the next time limit)

Nothing in it names the folder: the database refers to a checkpoint by its key inside
``checkpoints/`` and every invocation locates both from ``--out``, so the folder can be moved
or copied to another path or machine and the study resumed there. A finished run's
checkpoint is deleted (nothing resumes it); a failed run's stays, for a resubmission resumes
it (``store.studies``). The folder's size for the seed study: docs/time-boxed-studies.md.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from gradlab.store import runs
from gradlab.store.checkpoint_store import CheckpointStore
from gradlab.store.object_store_filesystem import FilesystemObjectStore
from gradlab.store.session import session_scope

log = logging.getLogger(__name__)

DATABASE_FILE = "gradlab.db"
CHECKPOINTS_FOLDER = "checkpoints"
# How long the last report took to write, for the next --time-limit to keep enough for it.
REPORT_TIMING_FILE = "report-timing.json"
# Runs in these states never train again from their checkpoint (a failed run may: a
# resubmission of its study resumes it).
DONE_WITH_CHECKPOINT = ("succeeded", "diverged", "cancelled")


@dataclass(frozen=True)
class StudyFolder:
    root: Path

    @property
    def database_url(self) -> str:
        return f"sqlite:///{(self.root / DATABASE_FILE).resolve()}"

    @property
    def checkpoints(self) -> Path:
        return (self.root / CHECKPOINTS_FOLDER).resolve()

    def checkpoint_store(self) -> CheckpointStore:
        return CheckpointStore(FilesystemObjectStore(self.checkpoints))


def drop_finished_checkpoints(factory: sessionmaker[Session], store: CheckpointStore,
                              run_ids: Iterable[str]) -> int:
    """Delete the checkpoints (reference, then bytes) of those runs that are done with
    theirs; how many were deleted."""
    with factory() as session:
        statuses = runs.statuses(session, list(run_ids))
    done = [run_id for run_id, status in statuses.items() if status in DONE_WITH_CHECKPOINT]
    dropped = 0
    for run_id in done:
        with session_scope(factory) as session:
            reference = runs.forget_checkpoint(session, run_id)
        # After the commit: the database never refers to bytes that are gone.
        if reference is not None or store.objects.keys(f"{run_id}/"):
            store.delete_run(run_id)
            dropped += 1
    return dropped


def last_report_seconds(out: Path) -> float | None:
    """How long the report in ``out`` took to write, when a previous invocation noted it."""
    try:
        return float(json.loads((out / REPORT_TIMING_FILE).read_text())["report_seconds"])
    except (OSError, ValueError, KeyError, TypeError):  # none yet, or not ours: no estimate
        return None


def note_report_seconds(out: Path, seconds: float) -> None:
    (out / REPORT_TIMING_FILE).write_text(json.dumps({"report_seconds": round(seconds, 1)}))
