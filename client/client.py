"""``GradlabClient``: the gradlab HTTP API from Python (httpx), as the CLI and the tests use it.

    from gradlab.client import GradlabClient

    with GradlabClient("http://127.0.0.1:8000", token="...") as gl:
        created = gl.submit_experiment({"name": "vgg08", "depth": 8, "seeds": [0, 1]})
        for event in gl.events(experiment_id=created.id):
            print(event.event, event.data)
        curves = gl.metrics_frame(created.id)            # pandas, with 'gradlab[pandas]'
        flow = gl.gradflow_frame(created.id, across_seeds=True)

The server and token default to ``GRADLAB_URL`` and ``GRADLAB_TOKEN``. Errors are
``gradlab.client.errors`` exceptions with one-line messages, never raw HTTP errors.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal

import httpx
from pydantic import BaseModel

from gradlab.client import frames
from gradlab.client.errors import ServerUnreachableError, error_for
from gradlab.client.models import (
    Event,
    Experiment,
    ExperimentCreated,
    ExperimentItem,
    Gradflow,
    Study,
    StudyCreated,
    StudyItem,
)
from gradlab.client.sse import parse_events
from gradlab.settings import ClientSettings

if TYPE_CHECKING:
    import pandas as pd

Stat = Literal["mean_abs", "max_abs", "l2"]
Window = Literal["last_batch", "epoch_mean"]
# A stream is idle for at most the server's heartbeat (15 s by default); well past that, the
# connection is presumed dead and the stream reconnects where it left off.
STREAM_READ_TIMEOUT = 60.0
RECONNECT_PAUSE = 1.0


class GradlabClient:
    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not url or token is None:
            # GRADLAB_URL and GRADLAB_TOKEN, read only for what the caller did not give
            settings = ClientSettings()
            url = url or settings.url
            token = settings.token if token is None else token
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> GradlabClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- plumbing ---------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ServerUnreachableError(f"cannot reach {self.url}: {exc}") from None
        if response.is_error:
            raise error_for(response.status_code, _json_or_none(response))
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()

    # --- experiments ------------------------------------------------------------------------

    def submit_experiment(self, spec: Mapping[str, Any] | BaseModel) -> ExperimentCreated:
        body = spec.model_dump(mode="json") if isinstance(spec, BaseModel) else dict(spec)
        return ExperimentCreated.model_validate(self._json("POST", "/experiments", json=body))

    def experiments(
        self, *, status: str | None = None, name: str | None = None, limit: int | None = None
    ) -> Iterator[ExperimentItem]:
        """Newest first, following the server's cursor pages (``limit`` in all, else every one)."""
        params: dict[str, Any] = {"limit": min(limit or 200, 200)}
        params |= {k: v for k, v in (("status", status), ("name", name)) if v is not None}
        given = 0
        while True:
            page = self._json("GET", "/experiments", params=params)
            for item in page["items"]:
                yield ExperimentItem.model_validate(item)
                given += 1
                if limit is not None and given >= limit:
                    return
            if not page.get("next_cursor"):
                return
            params["cursor"] = page["next_cursor"]

    def experiment(self, experiment_id: str) -> Experiment:
        return Experiment.model_validate(self._json("GET", f"/experiments/{experiment_id}"))

    def cancel(self, experiment_id: str) -> Experiment:
        path = f"/experiments/{experiment_id}/cancel"
        return Experiment.model_validate(self._json("POST", path))

    def metrics(self, experiment_id: str, max_points: int | None = None) -> dict[str, Any]:
        params = {} if max_points is None else {"max_points": max_points}
        return dict(self._json("GET", f"/experiments/{experiment_id}/metrics", params=params))

    def metrics_frame(
        self, experiment_id: str, *, across_seeds: bool = False, max_points: int | None = None
    ) -> pd.DataFrame:
        """The metrics as a DataFrame: a row per seed and epoch, or per epoch with mean/std
        across seeds (``gradlab.client.frames`` names the columns; needs pandas)."""
        payload = self.metrics(experiment_id, max_points=max_points)
        return frames.metrics_frame(payload, across_seeds=across_seeds)

    def diagnostics(self, experiment_id: str) -> list[dict[str, Any]]:
        return list(self._json("GET", f"/experiments/{experiment_id}/diagnostics")["findings"])

    def _gradflow(
        self, experiment_id: str, fmt: str, stat: Stat, window: Window, seed: int | None
    ) -> httpx.Response:
        params: dict[str, Any] = {"stat": stat, "window": window, "format": fmt}
        if seed is not None:
            params["seed"] = seed
        if fmt == "png":
            params["log_scale"] = "true"
        return self._request("GET", f"/experiments/{experiment_id}/gradflow", params=params)

    def gradflow(
        self,
        experiment_id: str,
        *,
        stat: Stat = "mean_abs",
        window: Window = "last_batch",
        seed: int | None = None,
    ) -> Gradflow:
        response = self._gradflow(experiment_id, "json", stat, window, seed)
        return Gradflow.model_validate(response.json())

    def gradflow_frame(
        self,
        experiment_id: str,
        *,
        stat: Stat = "mean_abs",
        window: Window = "last_batch",
        seed: int | None = None,
        across_seeds: bool = False,
    ) -> pd.DataFrame:
        """The gradient flow as a DataFrame: a row per seed, epoch and layer, or per epoch and
        layer with mean/std across seeds (``gradlab.client.frames``; needs pandas)."""
        payload = self._gradflow(experiment_id, "json", stat, window, seed).json()
        return frames.gradflow_frame(payload, across_seeds=across_seeds)

    def gradflow_csv(
        self, experiment_id: str, *, stat: Stat = "mean_abs", window: Window = "last_batch",
        seed: int | None = None,
    ) -> str:
        return self._gradflow(experiment_id, "csv", stat, window, seed).text

    def gradflow_png(
        self, experiment_id: str, *, stat: Stat = "mean_abs", window: Window = "last_batch",
        seed: int | None = None,
    ) -> bytes:
        return self._gradflow(experiment_id, "png", stat, window, seed).content

    # --- studies ----------------------------------------------------------------------------

    def submit_study(self, study: Mapping[str, Any] | BaseModel) -> StudyCreated:
        body = study.model_dump(mode="json") if isinstance(study, BaseModel) else dict(study)
        return StudyCreated.model_validate(self._json("POST", "/studies", json=body))

    def studies(self, limit: int = 100) -> list[StudyItem]:
        items = self._json("GET", "/studies", params={"limit": limit})
        return [StudyItem.model_validate(item) for item in items]

    def study(self, study_id: str) -> Study:
        return Study.model_validate(self._json("GET", f"/studies/{study_id}"))

    def report_json(self, study_id: str) -> dict[str, Any]:
        return dict(self._json("GET", f"/studies/{study_id}/report", params={"format": "json"}))

    def report_html(self, study_id: str) -> str:
        path = f"/studies/{study_id}/report"
        return self._request("GET", path, params={"format": "html"}).text

    def cancel_study(self, study_id: str) -> Study:
        return Study.model_validate(self._json("POST", f"/studies/{study_id}/cancel"))

    def resubmit_study(self, study_id: str) -> int:
        """Failed runs back to the queue; returns how many runs were sent to the workers."""
        return int(self._json("POST", f"/studies/{study_id}/resubmit")["runs_queued"])

    # --- events -----------------------------------------------------------------------------

    def events(
        self,
        *,
        experiment_id: str | None = None,
        study_id: str | None = None,
        last_event_id: str | None = None,
        reconnect: bool = True,
    ) -> Iterator[Event]:
        """Follow an experiment's (or a study's) events until ``end``; a dropped connection is
        resumed from the last event seen (``Last-Event-ID``), on whichever server answers."""
        if (experiment_id is None) == (study_id is None):
            raise ValueError("give exactly one of experiment_id and study_id")
        if experiment_id is not None:
            path = f"/experiments/{experiment_id}/events"
        else:
            path = f"/studies/{study_id}/events"
        while True:
            try:
                for event in self._stream(path, last_event_id):
                    last_event_id = event.id or last_event_id
                    yield event
                    if event.event == "end":
                        return
            except ServerUnreachableError:
                if not reconnect:
                    raise
            if not reconnect:
                return
            time.sleep(RECONNECT_PAUSE)

    def _stream(self, path: str, last_event_id: str | None) -> Iterator[Event]:
        headers = {"Accept": "text/event-stream"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        timeout = httpx.Timeout(self._http.timeout.connect, read=STREAM_READ_TIMEOUT)
        try:
            with self._http.stream("GET", path, headers=headers, timeout=timeout) as response:
                if response.is_error:
                    response.read()
                    raise error_for(response.status_code, _json_or_none(response))
                yield from parse_events(response.iter_lines())
        except httpx.HTTPError as exc:
            raise ServerUnreachableError(f"event stream from {self.url} broke: {exc}") from None


def _json_or_none(response: httpx.Response) -> object:
    try:
        return response.json()
    except ValueError:
        return None
