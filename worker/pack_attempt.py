"""Claimed runs trained together by the one training loop: a run alone is a pack of one.

A ``PackAttempt`` prepares each ``Attempt`` (those that resume at another epoch than the first
go back to the queue, to train at their own), hands them all back when a stop came before
training or the first epoch cannot fit in the time limit, records the pack on its runs, then
calls the training loop (``gradlab.core.pack.fit_pack``) with each run's own epoch writer and
the process's ``abandon`` event. It takes one decision per epoch boundary for all its members
(continue, or stop: every member then ends STOPPED at that boundary and is handed back), and
gives each run's result to its ``Attempt``. A failure of the loop is a failure of each run.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import TYPE_CHECKING, Protocol, cast

from sqlalchemy.orm import Session, sessionmaker

from gradlab.core.data import CifarArrays
from gradlab.science.records import EpochDecision, TrainingResult
from gradlab.store import runs
from gradlab.store.session import session_scope
from gradlab.worker.attempt import Attempt, DataSource
from gradlab.worker.outcomes import AttemptOutcome
from gradlab.worker.stopping import StopControl, TimeLimit

if TYPE_CHECKING:
    from gradlab.core.pack import PackRun

log = logging.getLogger(__name__)


class TrainingLoop(Protocol):
    """``gradlab.core.pack.fit_pack``'s signature (a stand-in in tests and bench/)."""

    def __call__(self, runs: list[PackRun], data: CifarArrays, *, device: str,
                 abandon: threading.Event | None = None) -> list[TrainingResult]: ...


class PackAttempt:
    """See the module docstring; ``run`` returns how each of its runs ended here."""

    def __init__(self, attempts: list[Attempt], factory: sessionmaker[Session],
                 stop: StopControl | None, training_loop: TrainingLoop | None = None) -> None:
        self.attempts, self._factory, self._stop = attempts, factory, stop
        self._loop = training_loop
        self._last_boundary = self._now()
        self._decision: tuple[int, EpochDecision] | None = None
        self._members: list[Attempt] = []

    def _now(self) -> float:
        return time.monotonic() if self._stop is None else self._stop.now()

    @property
    def _time_limit(self) -> TimeLimit | None:
        return None if self._stop is None else self._stop.time_limit

    def run(self, data: DataSource, device: str) -> dict[str, AttemptOutcome]:
        try:
            self._members = self._prepare(data, device)
            if self._members:
                self._train()
        except (SystemExit, KeyboardInterrupt):
            # Told to exit outright (a cold shutdown, a third Ctrl-C): on the way out, hand
            # back what has not ended, at its last finished epoch.
            for attempt in self.attempts:
                if not attempt.ended:
                    attempt.hand_back("on exit")
            raise
        finally:
            for attempt in self.attempts:
                attempt.close()
        # Every attempt has ended by now; one that had not would be left to its lease (LOST).
        return {a.run_id: a.outcome or AttemptOutcome.LOST for a in self.attempts}

    def _prepare(self, data: DataSource, device: str) -> list[Attempt]:
        members: list[Attempt] = []
        for attempt in self.attempts:
            if not attempt.prepare(data, device):
                continue
            if members and attempt.resume_epoch != members[0].resume_epoch:
                attempt.hand_back("to train at its own epoch, not in this pack")
                continue
            members.append(attempt)
        if members and self._stop is not None and self._stop.requested:
            for attempt in members:
                attempt.hand_back("before training began")
            return []
        if members and not self._first_epoch_fits(members):
            return []
        if len(members) > 1:
            _record_pack(self._factory, members)
        return members

    def _first_epoch_fits(self, members: list[Attempt]) -> bool:
        """With a time limit: whether the first epoch, as long as one measured before (in
        this process, or recorded by an earlier attempt), ends before it. A run never
        measured is tried: the deadline abandons its epoch if it does not."""
        limit = self._time_limit
        if limit is None:
            return True
        known = [s for s in (limit.expected(a.claimed.experiment_id) or a.last_epoch_seconds()
                             for a in members) if s is not None]
        if not known or limit.fits(max(known)):
            return True
        expected = max(known)
        for attempt in members:
            limit.refused[attempt.run_id] = expected
            attempt.hand_back(f"unstarted: an epoch takes about {expected:.0f} s, more than "
                              f"the {limit.left():.0f} s left")
        return False

    def _boundary(self, epoch: int) -> EpochDecision:
        """One decision per epoch boundary for every member: the next epoch is predicted to
        take as long as the last cycle (training, evaluation and every member's writes)."""
        if self._decision is not None and self._decision[0] == epoch:
            return self._decision[1]
        now = self._now()
        cycle, self._last_boundary = now - self._last_boundary, now
        limit = self._time_limit
        if limit is not None:
            for attempt in self._members:
                limit.measured(attempt.claimed.experiment_id, cycle)
        stop = self._stop is not None and self._stop.at_boundary(cycle)
        if stop and limit is not None and self._stop is not None and not self._stop.requested:
            # Stopped by the time limit alone: not offered again in this process.
            limit.refused.update(dict.fromkeys((a.run_id for a in self._members), cycle))
        decision = EpochDecision.STOP if stop else EpochDecision.CONTINUE
        self._decision = (epoch, decision)
        return decision

    def _train(self) -> None:
        from gradlab.core.pack import PackRun

        loop: TrainingLoop = self._loop or _fit_pack()
        members = self._members
        pack_runs = []
        for attempt in members:
            assert attempt.spec is not None
            pack_runs.append(PackRun(attempt.spec, attempt.claimed.seed,
                                     on_epoch_end=attempt.epoch_writer(self._boundary),
                                     resume_from=attempt.resume_from))
        # Set by prepare (to whatever the data source gave: tests' stand-ins give None).
        arrays = cast(CifarArrays, members[0].arrays)
        self._last_boundary = self._now()
        try:
            results = loop(pack_runs, arrays, device=members[0].device,
                           abandon=None if self._stop is None else self._stop.abandon)
        except Exception as exc:
            log.exception("training %d run(s) failed", len(members))
            for attempt in members:
                if not attempt.ended:
                    attempt.fail(exc)
            return
        for attempt, result in zip(members, results, strict=True):
            attempt.finish(result)
        if self._stop is not None:
            self._stop.cut_short.extend(a.run_id for a in members if a.cut_short)


def _fit_pack() -> TrainingLoop:
    from gradlab.core.pack import fit_pack

    return fit_pack


def _record_pack(factory: sessionmaker[Session], members: list[Attempt]) -> None:
    """The pack's id on each run (``runs.pack``) and in its reproducibility record."""
    pack = uuid.uuid4().hex[:12]
    owners = {m.run_id: m.claimed.owner for m in members}
    for member in members:
        member.environment["pack"] = {"id": pack, "size": len(members), "runs": list(owners)}
    with session_scope(factory) as session:
        runs.set_pack(session, owners, pack)
    log.info("training %d runs as pack %s: %s", len(members), pack, ", ".join(owners))
