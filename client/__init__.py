"""A typed Python client of the gradlab HTTP API (httpx): ``GradlabClient``."""

from gradlab.client.client import GradlabClient
from gradlab.client.errors import (
    ApiError,
    AuthenticationError,
    GradlabClientError,
    NotFoundError,
    ServerUnreachableError,
    ValidationError,
)
from gradlab.client.frames import PandasMissingError
from gradlab.client.models import Event

__all__ = [
    "ApiError",
    "AuthenticationError",
    "Event",
    "GradlabClient",
    "GradlabClientError",
    "NotFoundError",
    "PandasMissingError",
    "ServerUnreachableError",
    "ValidationError",
]
