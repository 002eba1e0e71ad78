"""Every GRADLAB_ variable the repository's own files name is known to the settings: a setting
of some process kind, or one of ``OTHER_VARIABLES`` (compose's, the images', the tests'). A
name that is neither would make every gradlab process refuse to start where it is set."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from gradlab.settings import OTHER_VARIABLES, readers

REPO = Path(__file__).resolve().parents[2]
NAME = re.compile(r"\bGRADLAB_[A-Z0-9_]*[A-Z0-9]\b")
# Python names that look like variables but are constants of a test module
NOT_VARIABLES = {"GRADLAB_SERVICES"}
# where misspelt names are shown on purpose: these tests, and the page that explains refusals
MISSPELLING = ("tests/settings/", "docs/settings.md")


def named_variables() -> dict[str, str]:
    """Each GRADLAB_ name in a tracked file (deliberate misspellings aside) and one file that
    names it."""
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.split()
    found: dict[str, str] = {}
    for path in files:
        if path.startswith(MISSPELLING) or path.endswith((".png", ".npz", ".ico")):
            continue
        try:
            text = (REPO / path).read_text()
        except (UnicodeDecodeError, FileNotFoundError):
            continue
        for name in NAME.findall(text):
            found.setdefault(name, path)
    return found


def test_every_gradlab_variable_named_in_the_repository_is_known() -> None:
    named = named_variables()
    assert "GRADLAB_DATABASE_URL" in named and "GRADLAB_API_PORT" in named
    unknown = {name: path for name, path in named.items()
               if name not in readers() and name not in OTHER_VARIABLES
               and name not in NOT_VARIABLES}
    assert unknown == {}


def test_settings_and_other_variables_do_not_overlap() -> None:
    assert set(readers()) & set(OTHER_VARIABLES) == set()
