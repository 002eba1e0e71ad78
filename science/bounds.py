"""What every input must satisfy before anything stores or acts on it, whatever its path (HTTP
body, query, path, CLI flag, study file).

- Text PostgreSQL can store: no NUL (a ``text``/``varchar`` value cannot hold it) and no lone
  UTF-16 surrogate (JSON's ``"\\ud800"`` decodes to one; it has no UTF-8 encoding).
- Finite numbers: JSON's ``NaN``/``Infinity`` and literals that overflow a double (``1e999``).
- Integers inside the database's 32-bit ``INTEGER`` columns (seeds, epochs, indexes).
- Numbers that are numbers and flags that are flags: JSON's ``true`` is not 1 nor ``0`` false
  (pydantic's lax mode would convert either way, and a typo would train something else).

``check_json_value`` walks free-form values (a study's grid and explicit cells) so that a bad
value anywhere is named by its place, not only where a typed field happens to read it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Strict

# PostgreSQL INTEGER: seeds, epochs, layer indexes and attempts are stored in such columns.
INT32_MAX = 2**31 - 1
# How deeply nested a free-form value (a grid value, an explicit cell) may be.
MAX_NESTING = 8


def _not_a_boolean(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be a number, not true or false")
    return value


# int and float fields of the spec: every lax conversion but bool -> number.
WholeNumber = Annotated[int, BeforeValidator(_not_a_boolean)]
RealNumber = Annotated[float, BeforeValidator(_not_a_boolean)]
# bool fields: only true or false (no 0, 1, "yes" or "off").
Flag = Annotated[bool, Strict()]


def text_problem(text: str) -> str | None:
    """Why ``text`` cannot be stored (None when it can)."""
    if "\x00" in text:
        return "must not contain NUL (\\u0000) characters"
    for char in text:
        if 0xD800 <= ord(char) <= 0xDFFF:
            return f"must not contain the lone surrogate \\u{ord(char):04x} (not valid UTF-8)"
    return None


def storable_text(text: str) -> str:
    """A pydantic after-validator: refuse text PostgreSQL cannot store."""
    problem = text_problem(text)
    if problem is not None:
        raise ValueError(problem)
    return text


StorableText = Annotated[str, AfterValidator(storable_text)]


def number_problem(value: float) -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number (not NaN or infinite, nor a literal that overflows)"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT32_MAX:
        return f"integers must be within [-{INT32_MAX}, {INT32_MAX}]"
    return None


def _place(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def check_json_value(value: Any, path: str = "", depth: int = 0) -> None:
    """Raise ``ValueError("<path>: <reason>")`` for the first value that cannot be stored:
    bad text (keys included), a non-finite or out-of-range number, or nesting past the cap."""
    if depth > MAX_NESTING:
        raise ValueError(f"{path or 'value'}: nested deeper than {MAX_NESTING} levels")
    if isinstance(value, str):
        problem = text_problem(value)
    elif isinstance(value, int | float):
        problem = number_problem(value)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            key_problem = text_problem(str(key))
            if key_problem is not None:
                raise ValueError(f"{_place(path, key)!r}: keys {key_problem}")
            check_json_value(item, _place(path, key), depth + 1)
        return
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            check_json_value(item, f"{path}[{index}]", depth + 1)
        return
    else:
        problem = None
    if problem is not None:
        raise ValueError(f"{path or 'value'}: {problem}")
