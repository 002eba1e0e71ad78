"""User text in figures is shown, never interpreted.

Matplotlib reads text between dollar signs as math (``$\\frac{`` in an experiment name is a
parse error, a 500 for the figure); every dollar sign of user text is escaped, so names are
drawn exactly as typed.
"""

from __future__ import annotations


def as_plain_text(text: str) -> str:
    """``text`` as matplotlib should draw it literally."""
    return text.replace("$", r"\$")
