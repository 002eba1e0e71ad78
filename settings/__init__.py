"""Settings per process kind, read from GRADLAB_* environment variables (pydantic-settings):
the shared server base, the API's, the worker's and the client's; each refuses the GRADLAB_
variables it cannot use (``kinds`` says how, docs/settings.md lists who reads what)."""

from gradlab.settings.kinds import (
    ApiSettings,
    ClientSettings,
    GradlabSettings,
    ServerSettings,
    WorkerSettings,
    clear_cached,
    get_api_settings,
    get_client_settings,
    get_worker_settings,
    readers,
)
from gradlab.settings.refusal import OTHER_VARIABLES, UnusableSettingError

__all__ = [
    "OTHER_VARIABLES",
    "ApiSettings",
    "ClientSettings",
    "GradlabSettings",
    "ServerSettings",
    "UnusableSettingError",
    "WorkerSettings",
    "clear_cached",
    "get_api_settings",
    "get_client_settings",
    "get_worker_settings",
    "readers",
]
