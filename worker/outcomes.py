"""How one attempt at a run ended on this worker: the one vocabulary of ``worker/``.

The training loop's ``RunOutcome`` says how training ended (succeeded, diverged, cancelled,
stopped); the worker adds what only it knows: the run failed for good, went back to the queue,
or was never (or no longer) this worker's to train.
"""

from __future__ import annotations

from enum import StrEnum


class AttemptOutcome(StrEnum):
    """How an attempt ended; the first three are also the run's final status in the store."""

    SUCCEEDED = "succeeded"
    DIVERGED = "diverged"
    CANCELLED = "cancelled"
    # A failure of the run itself, or an infrastructure failure with no attempts left: final.
    FAILED = "failed"
    # Queued again for another attempt: handed back because this worker stops (SIGTERM, a
    # time limit, Ctrl-C; the attempt is not counted), or after an infrastructure failure
    # with attempts left (it is). The caller sends it to the queue again.
    HANDED_BACK = "handed_back"
    # Not this worker's: not claimable (finished, leased elsewhere, missing), or its lease
    # moved on while it trained. Nothing more is written for it here.
    LOST = "lost"
