"""One way to render the error hierarchy (``gradlab.services.errors``):
``{"type": ..., "detail": ...}``.

Validation errors (422) add ``errors``: one ``{"field", "reason"}`` per problem, with the field
as a dotted path into the request (``hyperparameters.learning_rate``), and ``detail`` joins
them into one readable sentence. No handler ever returns a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

# The hierarchy itself lives with the rules that raise it (the service layer); the API renders it.
from gradlab.services.errors import (
    ConflictError,
    GradlabError,
    InvalidFieldsError,
    InvalidParameterError,
    NotFoundError,
    TooManyRequestsError,
    TooManyRunsError,
    UnauthorizedError,
)

__all__ = [
    "ConflictError",
    "GradlabError",
    "InvalidFieldsError",
    "InvalidParameterError",
    "NotFoundError",
    "TooManyRequestsError",
    "TooManyRunsError",
    "UnauthorizedError",
    "error_responses",
    "install_error_handlers",
    "validation_errors",
]

log = logging.getLogger(__name__)


# Pydantic prefixes messages of custom validators; the reason reads better without it.
_PREFIXES = ("Value error, ", "Assertion failed, ")
_REASONS = {"extra_forbidden": "unknown field", "missing": "field required"}
_LOCATION_ROOTS = {"body", "query", "path", "header", "cookie"}


def _field(location: Sequence[str | int]) -> str:
    parts = [str(p) for p in location]
    if parts and parts[0] in _LOCATION_ROOTS:
        parts = parts[1:]
    return ".".join(parts) or "body"


def _reason(error: dict[str, Any]) -> str:
    if error.get("type") in _REASONS:
        return _REASONS[error["type"]]
    message = str(error.get("msg", "invalid value"))
    for prefix in _PREFIXES:
        if message.startswith(prefix):
            return message[len(prefix) :]
    return message


def validation_errors(errors: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """Pydantic/FastAPI error dicts as ``[{"field", "reason"}]``."""
    return [{"field": _field(e.get("loc", ())), "reason": _reason(e)} for e in errors]


def _render(status_code: int, body: dict[str, Any]) -> JSONResponse:
    return JSONResponse(body, status_code=status_code)


async def _gradlab_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, GradlabError)
    return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers)


async def _request_validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    malformed = [e for e in exc.errors() if e.get("type") == "json_invalid"]
    if malformed:
        # Not JSON at all: a 400 (bad syntax), not a 422 (well-formed but wrong).
        problem = malformed[0].get("ctx", {}).get("error", "JSON decode error")
        return _render(400, {"type": "malformed_json", "detail": f"body is not JSON: {problem}"})
    errors = validation_errors(exc.errors())
    detail = "; ".join(f"{e['field']}: {e['reason']}" for e in errors)
    return _render(422, {"type": "validation_error", "detail": detail, "errors": errors})


_HTTP_KINDS = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    kind = _HTTP_KINDS.get(exc.status_code, "http_error")
    return JSONResponse(
        {"type": kind, "detail": str(exc.detail)},
        status_code=exc.status_code,
        headers=getattr(exc, "headers", None),
    )


async def _database_unavailable(_: Request, exc: Exception) -> JSONResponse:
    log.error("database unavailable: %s", exc)
    return _render(503, {"type": "service_unavailable", "detail": "database unavailable"})


async def _unstorable_value(_: Request, exc: Exception) -> JSONResponse:
    # A safety net: the validators refuse such values first (gradlab.science.bounds); one that
    # still reaches the database is the request's fault, not the server's.
    log.warning("the database refused a value: %s", str(exc).splitlines()[0])
    detail = "a value in the request cannot be stored or compared (out of range or invalid text)"
    return _render(422, {"type": "validation_error", "detail": detail,
                         "errors": [{"field": "request", "reason": detail}]})


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return _render(500, {"type": "internal_error", "detail": "internal server error"})


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(GradlabError, _gradlab_error)
    app.add_exception_handler(RequestValidationError, _request_validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(OperationalError, _database_unavailable)
    app.add_exception_handler(DataError, _unstorable_value)
    app.add_exception_handler(Exception, _unexpected)


_DESCRIPTIONS = {
    400: "The body is not JSON",
    401: "No bearer token, or an unknown or revoked one (when auth is required)",
    404: "Not found (or another user's)",
    413: "The body is larger than GRADLAB_MAX_REQUEST_BYTES",
    422: "A field, query value, path or cursor is invalid: one reason per field",
    429: "The user's queued + running runs would pass GRADLAB_MAX_ACTIVE_RUNS_PER_USER, or "
    "the user already has GRADLAB_RENDER_BACKLOG_PER_USER renders waiting (Retry-After)",
    503: "The database is unavailable",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries for the error codes a route can answer."""
    from gradlab.api.schemas import ErrorRead, ValidationErrorRead

    return {
        code: {
            "model": ValidationErrorRead if code == 422 else ErrorRead,
            "description": _DESCRIPTIONS.get(code, "Error"),
        }
        for code in codes
    }


def submission_route() -> dict[str, Any]:
    """The ``router.post`` arguments every route that submits work shares: 201, and each way a
    submission is refused (not JSON, too large, invalid or too costly, past the run limit)."""
    return {"status_code": 201, "responses": error_responses(400, 413, 422, 429)}
