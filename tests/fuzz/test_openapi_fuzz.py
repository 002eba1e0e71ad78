"""Property-based fuzzing of the whole OpenAPI schema (schemathesis) against the real app on
PostgreSQL, with auth off and on: no 5xx for any generated request, every response matching
its schema, every status documented (400 for malformed JSON included).

Seeded, so CI is stable. ``GRADLAB_FUZZ_EXAMPLES`` sets the examples per operation and mode
(default 25, about two minutes here); a long run is one variable away:
``GRADLAB_FUZZ_EXAMPLES=1000 .venv/bin/python -m pytest tests/fuzz``. ``GRADLAB_FUZZ_SEED``
picks another seeded run.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance
from schemathesis.config import SchemathesisConfig
from sqlalchemy.orm import Session, sessionmaker

from gradlab.api.app import create_app
from gradlab.dispatch.dispatchers import EmbeddedDispatcher
from gradlab.science.layers import layer_names
from gradlab.science.spec import ExperimentSpec
from gradlab.science.study import StudySpec
from gradlab.settings import ApiSettings
from gradlab.store.session import make_engine, make_session_factory, session_scope
from gradlab.store.studies import submit_study
from gradlab.store.users import create_token, viewer_for_token
from tests.api.synthetic_rows import insert_experiment

EXAMPLES = int(os.environ.get("GRADLAB_FUZZ_EXAMPLES", "25"))
SEED = int(os.environ.get("GRADLAB_FUZZ_SEED", "20261129"))
# A schema-valid body may still be refused on purpose (depth 6k+2, min lr below lr, the cost
# limits): JSON Schema cannot say so, so that one check does not apply.
EXCLUDED_CHECKS = [positive_data_acceptance]


class Seeded:
    """What the fuzzed requests can find: an experiment with epochs, a study, a token."""

    def __init__(self, factory: sessionmaker[Session], owner_id: str | None) -> None:
        spec = ExperimentSpec.model_validate({
            "name": f"fuzz-{uuid.uuid4().hex[:6]} $x$", "depth": 8, "width": 8,
            "hyperparameters": {"epochs": 3}, "seeds": [0, 1]})
        self.experiment_id, _ = insert_experiment(factory, spec, layer_names(spec), epochs=3,
                                                  owner_id=owner_id)
        study = StudySpec.model_validate({
            "name": f"fuzz-{uuid.uuid4().hex[:6]}", "grid": {"batch_norm": [False, True]},
            "base": {"depth": 8, "width": 8, "hyperparameters": {"epochs": 1}}})
        with session_scope(factory) as session:
            self.study_id = submit_study(session, study, owner_id=owner_id).study.id

    def aim(self, case: Any) -> None:
        """Point about half the generated ids at the seeded resources (deterministically)."""
        targets = {"experiment_id": self.experiment_id, "study_id": self.study_id}
        for name, real in targets.items():
            generated = (case.path_parameters or {}).get(name)
            if isinstance(generated, str):
                digest = hashlib.sha256(generated.encode("utf-8", "surrogatepass")).digest()
                if digest[0] % 2 == 0:
                    case.path_parameters[name] = real


# The seeded study's runs stay queued, so its event stream sends a snapshot and then nothing
# until a run changes: schemathesis read it until its 10 s request timeout, for every example
# aimed at the study (40 s of 25 examples, twice). The snapshot is all such a stream has to check:
# read up to it. (The seeded experiment's runs have finished: its stream ends by itself, with
# its `end` event, read in full.)
SCHEMATHESIS_CONFIG = SchemathesisConfig.from_dict(
    {"operations": [{"include-path": "/studies/{study_id}/events", "max-stream-events": 1}]})


def _app(postgres_url: str, auth: bool) -> Any:
    settings_ = ApiSettings(database_url=postgres_url, broker_url=None, auth_required=auth)
    return create_app(settings_, dispatcher=EmbeddedDispatcher())


@pytest.fixture(scope="module")
def fuzz_factory(module_postgres_url: str) -> Iterator[sessionmaker[Session]]:
    """On a database of the fuzzer's own: the hundreds of runs it queues stay out of the
    session database that other tests count in (and out of its single user's run limit)."""
    engine = make_engine(module_postgres_url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture(scope="module")
def token(fuzz_factory: sessionmaker[Session]) -> tuple[str, str]:
    with session_scope(fuzz_factory) as session:
        issued = create_token(session, f"fuzz-{uuid.uuid4().hex[:6]}")
        viewer = viewer_for_token(session, issued.token)
    assert viewer is not None and viewer.user_id is not None
    return issued.token, viewer.user_id


@pytest.fixture(scope="module")
def seeded_open(fuzz_factory: sessionmaker[Session]) -> Seeded:
    return Seeded(fuzz_factory, None)


@pytest.fixture(scope="module")
def seeded_owned(fuzz_factory: sessionmaker[Session], token: tuple[str, str]) -> Seeded:
    return Seeded(fuzz_factory, token[1])


@pytest.fixture(scope="module")
def schemas(module_postgres_url: str, token: tuple[str, str]) -> dict[bool, Any]:
    """The real app's own schema, served by the app, with auth off and on (where the schema
    itself needs the token)."""
    bearer = {"Authorization": f"Bearer {token[0]}"}
    return {auth: schemathesis.openapi.from_asgi("/openapi.json", _app(module_postgres_url, auth),
                                                  config=SCHEMATHESIS_CONFIG,
                                                  headers=bearer if auth else {})
            for auth in (False, True)}


def _operations() -> list[tuple[str, str]]:
    # Collected from the app itself: a route added later is fuzzed without editing this file.
    paths = create_app(ApiSettings(database_url="sqlite://")).openapi()["paths"]
    return [(method.upper(), path) for path, ops in paths.items() for method in ops]


FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                         ids=["valid", "invalid"])
@pytest.mark.parametrize(("method", "path"), _operations())
@pytest.mark.parametrize("auth", [False, True], ids=["auth-off", "auth-on"])
def test_fuzz(
    auth: bool, method: str, path: str, mode: GenerationMode, schemas: dict[bool, Any],
    seeded_open: Seeded, seeded_owned: Seeded, token: tuple[str, str],
) -> None:
    operation = schemas[auth][path][method]
    seeded = seeded_owned if auth else seeded_open
    # Valid requests carry the user's token; invalid ones keep whatever auth header the case
    # has (none or a made-up one is part of what makes them invalid: 401 is their answer).
    valid = mode is GenerationMode.POSITIVE
    headers = {"Authorization": f"Bearer {token[0]}"} if auth and valid else None

    @hypothesis_seed(SEED)
    @FUZZ
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case: Any) -> None:
        seeded.aim(case)
        case.call_and_validate(headers=headers, excluded_checks=EXCLUDED_CHECKS)

    try:
        fuzz()
    except Unsatisfiable:
        if mode is GenerationMode.POSITIVE:
            raise
        pytest.skip("every input of this operation is valid: there is nothing invalid to send")


def _is_json(raw: bytes) -> bool:
    try:
        json.loads(raw)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("path", ["/experiments", "/studies"])
def test_any_bytes_as_a_body_is_a_documented_4xx(path: str, module_postgres_url: str) -> None:
    """Bytes of any kind (mostly not JSON) as the body: 400 when they are not JSON, else a
    documented status (201, 413, 422, 429); never a 5xx."""
    client = TestClient(_app(module_postgres_url, auth=False))
    documented = {int(code) for code in
                  client.get("/openapi.json").json()["paths"][path]["post"]["responses"]}

    @hypothesis_seed(SEED)
    @FUZZ
    @given(raw=st.one_of(st.binary(max_size=512),
                         st.text(max_size=256).map(lambda t: t.encode("utf-8", "surrogatepass"))))
    def fuzz(raw: bytes) -> None:
        response = client.post(path, content=raw, headers={"content-type": "application/json"})
        assert response.status_code in documented, (raw, response.status_code, response.text)
        if raw and not _is_json(raw):  # (no body at all is a missing field: 422)
            assert response.status_code == 400, (raw, response.text)

    fuzz()
