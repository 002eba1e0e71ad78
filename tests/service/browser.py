"""The dashboard tests' browser: Debian's headless Chromium driven by Playwright, a tab that
records every console error, page error and failed request, and helpers that read a chart the
way a person does (the real mouse over it, the value its live legend shows).

Screenshots go under each test's temporary folder; with ``GRADLAB_DOCS_SCREENSHOTS=1`` the
ones the documentation shows are also written, small, to ``docs/images/`` (docs/dashboard.md).
"""

from __future__ import annotations

import os
from pathlib import Path

from tests.support.processes import REPO

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 20_000
DOCS_IMAGES = REPO / "docs" / "images"
# A palette this size keeps a chart's anti-aliased lines smooth and the PNG a few dozen KB.
DOCS_COLOURS = 64


class Page:
    """A browser tab that records console errors, page errors and failed requests."""

    def __init__(self, browser: object, base_url: str, shots: Path) -> None:
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000})  # type: ignore[attr-defined]
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.base_url, self.shots = base_url, shots
        self.problems: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.problems.append(m.text))
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.page.on("requestfailed", self._failed)
        self.page.on("response", lambda r: r.status >= 400 and self.problems.append(
            f"{r.status} {r.url}"))

    def _failed(self, request: object) -> None:
        failure = request.failure or ""  # type: ignore[attr-defined]
        if "ERR_ABORTED" not in failure:  # a stream closed on purpose when leaving a page
            self.problems.append(f"request failed: {request.url} {failure}")  # type: ignore[attr-defined]

    def open(self, fragment: str) -> object:
        self.page.goto(f"{self.base_url}/#/{fragment}")
        return self.page

    def shot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def docs_shot(self, name: str, height: int = 1000) -> Path | None:
        """The top ``height`` pixels of the page, for docs/images/ (when asked for)."""
        if os.environ.get("GRADLAB_DOCS_SCREENSHOTS") != "1":
            return None
        from PIL import Image  # matplotlib's own dependency

        raw = self.shots / f"{name}-docs-raw.png"
        self.page.mouse.move(0, 0)  # no tooltip, no hover legend
        self.page.evaluate("() => window.scrollTo(0, 0)")
        self.page.screenshot(path=str(raw), clip={"x": 0, "y": 0, "width": 1400, "height": height})
        DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
        path = DOCS_IMAGES / f"{name}.png"
        with Image.open(raw) as image:
            small = image.convert("RGB").quantize(colors=DOCS_COLOURS)
            small.save(path, optimize=True)
        return path

    def close(self) -> None:
        self.context.close()


def legend_value(page: object, chart: str, label: str) -> str:
    """The text one series' row of a chart's live legend shows now."""
    return str(page.evaluate(  # type: ignore[attr-defined]
        """([chart, label]) => {
            const u = window.__gradlab.charts[chart];
            const rows = [...u.root.querySelectorAll('.u-legend .u-series')];
            const row = rows.find(r => r.querySelector('.u-label').textContent === label);
            return row.querySelector('.u-value').textContent;
        }""",
        [chart, label],
    ))


def hover(page: object, chart: str, x_value: float) -> None:
    """Move the real mouse over a chart, to where ``x_value`` is drawn."""
    box = page.evaluate(  # type: ignore[attr-defined]
        """([chart, x]) => {
            const u = window.__gradlab.charts[chart];
            const r = u.over.getBoundingClientRect();
            return {x: r.left + u.valToPos(x, 'x'), y: r.top + r.height / 2};
        }""",
        [chart, x_value],
    )
    page.mouse.move(box["x"], box["y"])  # type: ignore[attr-defined]
