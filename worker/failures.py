"""Why a run failed: the infrastructure (retried) or the run itself (final).

Infrastructure failures are the worker's or its surroundings': the database or broker gone
past the write retries, the node out of memory, the data missing or unreadable on this node,
the device absent. Another attempt, on this worker or another, may well succeed, so the run is
queued again until ``GRADLAB_MAX_ATTEMPTS`` attempts were used (a worker killed outright is the
same case, found by its lease). Everything else is the run's own: an invalid spec, a
checkpoint of another run, an error the spec's training raises; trying again would fail the
same way and waste a GPU, so the run fails at once. Divergence is an outcome, not a failure.
"""

from __future__ import annotations

import traceback
from typing import Literal

from sqlalchemy.exc import DBAPIError, OperationalError

FailureKind = Literal["infrastructure", "run"]


def _is_out_of_memory(exc: BaseException) -> bool:
    # torch.cuda.OutOfMemoryError, without importing torch here
    return isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"


def classify(exc: BaseException) -> FailureKind:
    """Whether another attempt may succeed (``infrastructure``) or not (``run``)."""
    if isinstance(exc, OperationalError):
        return "infrastructure"
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return "infrastructure"
    if _is_out_of_memory(exc):
        return "infrastructure"
    if isinstance(exc, OSError):  # data missing or unreadable here, a lost connection
        return "infrastructure"
    return "run"


def describe(exc: BaseException) -> str:
    """The exception as one short line (type and message), for the run's ``error``."""
    return "".join(traceback.format_exception_only(exc)).strip()
