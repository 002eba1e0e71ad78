"""The GRADLAB_ variables a process refuses: those of no gradlab setting (a typo, a setting
that was renamed) and those only another process kind reads (docs/settings.md).

Pure functions over names; ``gradlab.settings.kinds`` says which kind reads which name.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping

PREFIX = "GRADLAB_"

# GRADLAB_ variables that are not settings of any process: every kind lets them pass.
OTHER_VARIABLES: Mapping[str, str] = {
    # docker-compose.yml's own, which its env file (.env) also hands to every container
    "GRADLAB_API_PORT": "docker-compose.yml",
    "GRADLAB_API_WORKERS": "docker-compose.yml",
    "GRADLAB_HOST_DATA_DIR": "docker-compose.yml",
    "GRADLAB_WORKER_STOP_GRACE_PERIOD": "docker-compose.yml",
    "GRADLAB_ENV_FILE": "docker-compose.yml",
    "GRADLAB_POSTGRES_IMAGE": "docker-compose.yml",
    "GRADLAB_REDIS_IMAGE": "docker-compose.yml",
    "GRADLAB_API_IMAGE": "docker-compose.yml",
    "GRADLAB_WORKER_IMAGE": "docker-compose.yml",
    "GRADLAB_BASE_IMAGE": "docker-compose.yml and scripts/build_images.py",
    "GRADLAB_TORCH_VARIANT": "docker-compose.yml and scripts/build_images.py",
    "GRADLAB_BUILD_CACHE_KEEP": "scripts/build_images.py",
    # set by the images (the commit a run was trained with) and by a worker for its children
    "GRADLAB_GIT_REVISION": "the images",
    "GRADLAB_WORKER_GPUS": "the worker, for its children",
    # the test suite's
    "GRADLAB_TEST_POSTGRES_ADMIN_URL": "the tests",
    "GRADLAB_TEST_REDIS_URL": "the tests",
    "GRADLAB_FUZZ_EXAMPLES": "the tests",
    "GRADLAB_FUZZ_SEED": "the tests",
    "GRADLAB_DOCS_SCREENSHOTS": "the tests",
}


class UnusableSettingError(ValueError):
    """GRADLAB_ variables a process kind cannot use; the process refuses to start."""

    def __init__(self, kind: str, problems: list[str]) -> None:
        self.kind, self.problems = kind, problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{kind} cannot use these GRADLAB_ variables (docs/settings.md); "
                         f"unset them for it:\n{lines}")


def _said(kinds: Iterable[str]) -> str:
    return " and ".join(kinds)


def _closest(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate spelt most like ``name``, compared without the common prefix."""
    tails = {c.removeprefix(PREFIX): c for c in candidates}
    near = difflib.get_close_matches(name.removeprefix(PREFIX), sorted(tails), n=1)
    return tails[near[0]] if near else None


def problem_of(name: str, *, kind: str, own: frozenset[str],
               readers: Mapping[str, list[str]]) -> str:
    """Why ``name`` (not among ``kind``'s settings) is refused, with the closest name."""
    others = readers.get(name)
    if others is not None:
        near = _closest(name, own)
        hint = f"; did you mean {near}?" if near else ""
        return f"{name}: read by {_said(others)}, not by {kind}{hint}"
    near = _closest(name, readers)
    if near:
        return f"{name}: unknown setting; did you mean {near} (read by {_said(readers[near])})?"
    return f"{name}: unknown setting"


def refused(environ: Mapping[str, str], *, kind: str, own: frozenset[str],
            tolerated: frozenset[str], readers: Mapping[str, list[str]]) -> list[str]:
    """One line per GRADLAB_ variable of ``environ`` that ``kind`` neither reads (``own``) nor
    lets pass (``tolerated``, ``OTHER_VARIABLES``). Names are matched as pydantic-settings
    reads them (case-insensitive); an empty value sets nothing and passes."""
    problems = []
    for key, value in sorted(environ.items()):
        name = key.upper()
        if not name.startswith(PREFIX) or value == "":
            continue
        if name in own or name in tolerated or name in OTHER_VARIABLES:
            continue
        problems.append(problem_of(name, kind=kind, own=own, readers=readers))
    return problems
