"""What can go wrong talking to a gradlab server, as exceptions with one-line messages.

The API answers every error as ``{"type", "detail"}`` (422 adds ``errors``: field and reason);
these keep that, and the status, so a caller can tell "fix your spec" from "log in" from
"the server is down".
"""

from __future__ import annotations

from dataclasses import dataclass, field


class GradlabClientError(Exception):
    """Base of everything the client raises."""


class ServerUnreachableError(GradlabClientError):
    """No HTTP answer: wrong URL, server down, network cut, timeout."""


@dataclass
class FieldProblem:
    field: str
    reason: str


@dataclass
class ApiError(GradlabClientError):
    """The server answered with an error status."""

    status: int
    type: str
    detail: str
    errors: list[FieldProblem] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.detail} (HTTP {self.status})"


class AuthenticationError(ApiError):
    """401/403: no token, or one the server does not accept (set GRADLAB_TOKEN)."""


class NotFoundError(ApiError):
    """404: no such experiment or study (or not one of yours)."""


class ValidationError(ApiError):
    """422: the request (a spec, a query value) is invalid; ``errors`` names each field."""


def error_for(status: int, body: object) -> ApiError:
    """The right ``ApiError`` for a response's status and JSON body (any body is accepted)."""
    data = body if isinstance(body, dict) else {}
    detail = str(data.get("detail") or f"HTTP {status}")
    problems = [
        FieldProblem(str(e.get("field", "")), str(e.get("reason", "")))
        for e in data.get("errors") or []
        if isinstance(e, dict)
    ]
    kind = str(data.get("type") or "http_error")
    if status in (401, 403):
        return AuthenticationError(status, kind, detail, problems)
    if status == 404:
        return NotFoundError(status, kind, detail, problems)
    if status == 422:
        return ValidationError(status, kind, detail, problems)
    return ApiError(status, kind, detail, problems)
