"""When a run's checkpoint is saved, in one place: the worker's checkpoint cadence.

Every finished epoch leaves a snapshot of the run's state in memory (the training loop's
checkpoint thunk is only valid inside the epoch callback). It is written to the checkpoint
store, and referenced in the epoch's transaction, every epoch on the CPU (epochs are slow
there), otherwise when at least ``GRADLAB_CHECKPOINT_SECONDS`` have passed since the last one,
and always at the last epoch. On a GPU a run's first checkpoint comes after a random part
(10% to 100%) of that interval: runs that start together (a study sent to a fleet at once) then
write their checkpoints spread over the interval, not all in the same second.

Whatever snapshot is still unsaved is written by ``save_pending``: the one call for a cancel,
a shutdown (SIGTERM, Ctrl-C) and the end of training, whatever the outcome. After each
committed reference the run's older objects are deleted.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from gradlab.settings import WorkerSettings
from gradlab.store import runs
from gradlab.store.checkpoint_store import CheckpointRef, CheckpointStore
from gradlab.store.session import session_scope

log = logging.getLogger(__name__)


# The first checkpoint of a GPU run comes after this part of the interval, drawn uniformly.
FIRST_CHECKPOINT_SPREAD = (0.1, 1.0)


class CheckpointCadence:
    """Every epoch, or at most one checkpoint every ``seconds``; always at the last epoch.

    ``first_after``: seconds from the start (or resume) to the first checkpoint, default
    ``seconds``; afterwards one every ``seconds``.
    """

    def __init__(self, seconds: float, *, every_epoch: bool = False,
                 clock: Callable[[], float] = time.monotonic, first_after: float | None = None):
        self._seconds, self._every_epoch, self._clock = seconds, every_epoch, clock
        # the run's start (or resume) counts as a checkpoint taken ``first_after`` early
        early = 0.0 if first_after is None else seconds - first_after
        self._last = clock() - early

    def due(self, *, last_epoch: bool) -> bool:
        return last_epoch or self._every_epoch or self._clock() - self._last >= self._seconds

    def saved(self) -> None:
        self._last = self._clock()


def cadence_for(device: str, settings: WorkerSettings, *, rng: random.Random | None = None,
                clock: Callable[[], float] = time.monotonic) -> CheckpointCadence:
    """Every epoch on the CPU; at most every ``GRADLAB_CHECKPOINT_SECONDS`` on a GPU, the
    first after a random part of that interval (``FIRST_CHECKPOINT_SPREAD``)."""
    seconds = settings.checkpoint_seconds
    if device.startswith("cpu"):
        return CheckpointCadence(seconds, every_epoch=True, clock=clock)
    part = (rng or random).uniform(*FIRST_CHECKPOINT_SPREAD)
    return CheckpointCadence(seconds, first_after=seconds * part, clock=clock)


@dataclass
class _Snapshot:
    epoch: int
    data: bytes


class RunCheckpoints:
    """One run's checkpoints: a snapshot per epoch, saved at the cadence or on demand."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        store: CheckpointStore,
        claimed: runs.ClaimedRun,
        cadence: CheckpointCadence,
        *,
        last_epoch: int,
    ):
        self._factory, self._store, self._claimed = factory, store, claimed
        self._cadence, self._last_epoch = cadence, last_epoch
        self._unsaved: _Snapshot | None = None

    def at_epoch_end(
        self, epoch: int, make_checkpoint: Callable[[], bytes], *, due: bool = False
    ) -> CheckpointRef | None:
        """Snapshot the epoch; when a checkpoint is due (by the cadence, or ``due``: the run
        stops here), write its bytes and return the reference to record in the epoch's
        transaction (then call ``committed``)."""
        self._unsaved = _Snapshot(epoch, make_checkpoint())
        if not (due or self._cadence.due(last_epoch=epoch >= self._last_epoch)):
            return None
        return self._write_object(self._unsaved)

    def committed(self, ref: CheckpointRef) -> None:
        """The reference is committed: forget the snapshot, delete the older objects."""
        if self._unsaved is not None and self._unsaved.epoch <= ref.epoch:
            self._unsaved = None
        self._cadence.saved()
        try:
            self._store.prune(self._claimed.run_id, ref)
        except Exception as exc:  # garbage only: the next prune or the deletion gets it
            log.warning("could not delete old checkpoints of run %s: %s", self._claimed.run_id,
                        exc)

    def save_pending(self, reason: str) -> CheckpointRef | None:
        """Write the latest unsaved snapshot and its reference now (cancel, shutdown, end).

        Never raises: at shutdown the run must still be handed back. A snapshot whose epoch
        was never recorded (stopped inside its transaction) cannot be referenced; the run then
        resumes from its previous checkpoint and replays the epochs since."""
        snapshot = self._unsaved
        if snapshot is None:
            return None
        run_id, owner = self._claimed.run_id, self._claimed.owner
        try:
            ref = self._write_object(snapshot)
            with session_scope(self._factory) as session:
                runs.record_checkpoint(session, run_id, ref, owner=owner)
        except Exception as exc:
            log.warning("could not save the checkpoint of run %s epoch %d at %s: %s",
                        run_id, snapshot.epoch, reason, exc)
            return None
        log.info("saved the checkpoint of run %s epoch %d at %s", run_id, snapshot.epoch, reason)
        self.committed(ref)
        return ref

    def _write_object(self, snapshot: _Snapshot) -> CheckpointRef:
        return self._store.save(
            self._claimed.run_id, snapshot.epoch, self._claimed.attempt, snapshot.data
        )
