"""One error hierarchy for every rule the service layer and the API refuse with.

Each error carries the HTTP status and type it is answered with (``api/errors.py`` renders it
as ``{"type", "detail"}``); a local edge (the CLI) prints its ``detail``. Raised before
anything is written, or the caller's transaction rolls back, so nothing of a refused request
is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class GradlabError(Exception):
    """Base of every error answered on purpose. A subclass names its HTTP status and type on
    its class line (``class NotFoundError(GradlabError, status_code=404, type="not_found")``)."""

    status_code = 500
    type = "internal_error"
    headers: dict[str, str] | None = None

    def __init_subclass__(cls, *, status_code: int | None = None, type: str | None = None) -> None:
        super().__init_subclass__()
        if status_code is not None:
            cls.status_code = status_code
        if type is not None:
            cls.type = type

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def body(self) -> dict[str, Any]:
        return {"type": self.type, "detail": self.detail}


class NotFoundError(GradlabError, status_code=404, type="not_found"):
    """Absent, or another user's (never told apart)."""


class ConflictError(GradlabError, status_code=409, type="conflict"):
    """The request is valid but the resource's state forbids it now (say what to do first)."""


class UnauthorizedError(GradlabError, status_code=401, type="unauthorized"):
    """No token, or one that is unknown or revoked (auth on)."""

    headers = {"WWW-Authenticate": "Bearer"}


class TooManyRunsError(GradlabError, status_code=429, type="too_many_runs"):
    """The owner's queued + running runs would pass their limit."""


class TooManyRequestsError(GradlabError, status_code=429, type="too_many_requests"):
    """The user already has as many expensive requests (renders) waiting as they may."""

    def __init__(self, detail: str, retry_after_seconds: int = 1) -> None:
        super().__init__(detail)
        self.headers = {"Retry-After": str(retry_after_seconds)}


class InvalidFieldsError(GradlabError, status_code=422, type="validation_error"):
    """A request that parsed but makes no sense: one ``(field, reason)`` per problem."""

    def __init__(self, errors: Sequence[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{field}: {reason}" for field, reason in errors))
        self.errors = list(errors)

    def body(self) -> dict[str, Any]:
        return {
            **super().body(),
            "errors": [{"field": field, "reason": reason} for field, reason in self.errors],
        }


class InvalidParameterError(InvalidFieldsError):
    """One query value or header out of range, a bad cursor."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__([(field, reason)])
        self.field = field
        self.reason = reason
