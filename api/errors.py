"""One error hierarchy and one way to render it: ``{"type": ..., "detail": ...}``.

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
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class GradlabError(Exception):
    """Base of every error the API answers on purpose."""

    status_code = 500
    type = "internal_error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def body(self) -> dict[str, Any]:
        return {"type": self.type, "detail": self.detail}


class NotFoundError(GradlabError):
    status_code = 404
    type = "not_found"


class ConflictError(GradlabError):
    """The request is valid but the resource's state forbids it now (say what to do first)."""

    status_code = 409
    type = "conflict"


class InvalidParameterError(GradlabError):
    """A request that parsed but makes no sense (a query value out of range, a bad cursor)."""

    status_code = 422
    type = "validation_error"

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason

    def body(self) -> dict[str, Any]:
        return {**super().body(), "errors": [{"field": self.field, "reason": self.reason}]}


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
    return _render(exc.status_code, exc.body())


async def _request_validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = validation_errors(exc.errors())
    detail = "; ".join(f"{e['field']}: {e['reason']}" for e in errors)
    return _render(422, {"type": "validation_error", "detail": detail, "errors": errors})


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    kind = "not_found" if exc.status_code == 404 else "http_error"
    return JSONResponse(
        {"type": kind, "detail": str(exc.detail)},
        status_code=exc.status_code,
        headers=getattr(exc, "headers", None),
    )


async def _database_unavailable(_: Request, exc: Exception) -> JSONResponse:
    log.error("database unavailable: %s", exc)
    return _render(503, {"type": "service_unavailable", "detail": "database unavailable"})


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return _render(500, {"type": "internal_error", "detail": "internal server error"})


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(GradlabError, _gradlab_error)
    app.add_exception_handler(RequestValidationError, _request_validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(OperationalError, _database_unavailable)
    app.add_exception_handler(Exception, _unexpected)


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries for the error codes a route can answer."""
    from gradlab.api.schemas import ErrorRead, ValidationErrorRead

    return {code: {"model": ValidationErrorRead if code == 422 else ErrorRead} for code in codes}
