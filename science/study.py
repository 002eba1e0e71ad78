"""A study: one base spec, a grid over any of its fields and/or an explicit list of cells.

``expand`` turns a :class:`StudySpec` into validated :class:`StudyCell` s (one experiment
each); ``apply_scale`` shrinks a spec to the ``smoke`` or ``medium`` scale so a whole study fits
on a CPU.

Field paths are the spec's own names, dotted for nested ones: ``depth``, ``batch_norm``,
``residual``, ``hyperparameters.learning_rate``, ``hyperparameters.weight_decay``,
``data.train_limit``... An explicit cell is a partial spec (nested mappings or dotted keys)
laid over the base.
"""

from __future__ import annotations

import itertools
import math
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gradlab.science.bounds import StorableText, check_json_value
from gradlab.science.spec import MAX_SEEDS, ExperimentSpec, Seed

Scale = Literal["full", "medium", "smoke"]
SCALES: tuple[str, ...] = ("full", "medium", "smoke")


class ReducedScale(BaseModel):
    """What a reduced ``--scale`` keeps of every cell: fewer epochs on a slice of the data.

    A cell keeps its own schedule (cosine over its epochs, the same learning rates): only
    how long it trains and on how much data change, so what a finding measures is the same
    at every scale and the diagnostics read it with the same thresholds.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int = Field(3, ge=1, description="at most this many epochs")
    train_limit: int = Field(3000, ge=1, description="first N of the 47,500 training images")
    val_limit: int = Field(500, ge=1, description="first N of the 2,500 validation images")
    test_limit: int = Field(1000, ge=1, description="first N of the 10,000 test images")
    max_seeds: int | None = Field(
        None, ge=1, description="keep only the first N seeds of each cell (None: all)"
    )


# The earlier name of the record, kept for callers that build their own smoke scale.
SmokeScale = ReducedScale

# Sized so that ``examples/seed-study.yaml`` at smoke scale (11 runs: 9 VGG38, 2 VGG08; 90
# training steps each) runs in well under 15 minutes on a 2-core CPU: measured 5 min 33 s wall
# on the project's 2-core box when it was nearly idle (about 35 s per VGG38 run), and 19 to 36
# minutes while other jobs kept both cores busy. Plain VGG38's vanishing gradients, its not
# training, and BatchNorm's restored gradient flow are already visible at this size (they are
# properties of the architecture, present from the first epoch).
SMOKE = ReducedScale()

# The smallest size found at which the seed study's report states all five findings, weight
# decay 1e-3's cure of the overfitting included (`scripts/find_scale.py` on an H200, README
# "Medium scale"): 2,400 steps per run. Weight decay is coupled L2 under Adam, a pull that
# acts a little every step, so its cure needs steps, not only epochs: at 200 to 1,000 steps
# (500 to 2,000 images, 40 to 100 epochs) every weight-decay cell overfitted as well, and at
# 2,000 images x 50 or 100 epochs only weight decay 1e-2 was credited. On a 2-core CPU this
# is hours, not a coffee break; on a GPU, minutes.
MEDIUM = ReducedScale(epochs=80, train_limit=3000, val_limit=500, test_limit=1000)

REDUCED_SCALES: dict[str, ReducedScale] = {"smoke": SMOKE, "medium": MEDIUM}


def apply_scale(
    spec: ExperimentSpec, scale: str, reduced: ReducedScale | None = None
) -> ExperimentSpec:
    """The spec as run at ``scale``: ``full`` unchanged, ``smoke`` and ``medium`` shrunk by
    their :class:`ReducedScale` (``reduced`` replaces it, for tests and one-off sizes)."""
    if scale == "full":
        return spec
    if scale not in REDUCED_SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    size = reduced if reduced is not None else REDUCED_SCALES[scale]

    def shrink(current: int | None, limit: int) -> int:
        return limit if current is None else min(current, limit)

    updates: dict[str, object] = {
        "hyperparameters.epochs": min(spec.hyperparameters.epochs, size.epochs),
        "data.train_limit": shrink(spec.data.train_limit, size.train_limit),
        "data.val_limit": shrink(spec.data.val_limit, size.val_limit),
        "data.test_limit": shrink(spec.data.test_limit, size.test_limit),
    }
    if size.max_seeds is not None:
        updates["seeds"] = spec.seeds[: size.max_seeds]
    return spec.with_updates(updates)


# --- the study spec -------------------------------------------------------------------------


# Structural caps, checked by the model itself so that validating a study is always cheap;
# the number of cells and runs a request may create is capped again by the service's settings
# (``check_study_size``) before anything is expanded.
MAX_GRID_PATHS = 16
MAX_VALUES_PER_PATH = 1_000
MAX_EXPLICIT_CELLS = 1_000
MAX_TEMPLATE_LENGTH = 200
MAX_DESCRIPTION_LENGTH = 10_000


class StudySpec(BaseModel):
    """A grid (cartesian product) and/or an explicit list of cells over one base spec.

    - ``grid``: ``{field path: [values]}``; every combination is one cell.
    - ``experiments``: explicit cells, each a partial spec over the base (may set ``name`` and
      ``seeds``).
    - ``seeds``: the seeds of every cell that does not name its own (default: the base's).
    - ``name_template``: how grid cells are named: ``{leaf}`` is replaced by the coordinate
      whose path ends in ``leaf``; nothing is evaluated (no attribute or index access, no
      conversions). ``{flag:text}`` shows ``text`` when the boolean is true and nothing when
      false; an integer may be zero-padded with ``{depth:02d}`` (``0`` and one digit, then
      ``d``), so ``"vgg{depth:02d}{batch_norm:-bn}"`` gives ``vgg08``, ``vgg38-bn``.
    - ``scale``: ``full``, ``medium`` or ``smoke`` (the CLI's ``--scale`` overrides it).

    Validation checks the structure only; :func:`expand` builds and validates every cell.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: StorableText = Field(min_length=1, max_length=200)
    description: StorableText = Field("", max_length=MAX_DESCRIPTION_LENGTH)
    base: ExperimentSpec = ExperimentSpec()
    grid: dict[str, list[Any]] = Field(default_factory=dict, max_length=MAX_GRID_PATHS)
    name_template: StorableText | None = Field(None, max_length=MAX_TEMPLATE_LENGTH)
    experiments: list[dict[str, Any]] = Field(
        default_factory=list, max_length=MAX_EXPLICIT_CELLS
    )
    seeds: list[Seed] | None = Field(None, min_length=1, max_length=MAX_SEEDS)
    scale: Scale = "full"

    @model_validator(mode="after")
    def _structure_is_valid(self) -> StudySpec:
        # Paths, value types and the template's syntax; never the cells themselves, which
        # may be many (expansion happens later, off the API's event loop).
        for path, values in self.grid.items():
            _check_path(path)
            if not values:
                raise ValueError(f"grid.{path}: needs at least one value")
            if len(values) > MAX_VALUES_PER_PATH:
                raise ValueError(f"grid.{path}: at most {MAX_VALUES_PER_PATH} values")
        check_json_value(self.grid, "grid")
        check_json_value(self.experiments, "experiments")
        if self.name_template is not None:
            _parse_template(self.name_template)
        return self

    def cell_count(self) -> int:
        """How many cells :func:`expand` would make (computed without expanding)."""
        grid_cells = math.prod(len(values) for values in self.grid.values()) if self.grid else 0
        return max(1, grid_cells + len(self.experiments))

    def run_count(self) -> int:
        """How many runs (cells x seeds) the study asks for, at most (computed without
        expanding; a reduced scale may keep fewer seeds)."""
        default_seeds = len(self.seeds if self.seeds is not None else self.base.seeds)
        runs = self._grid_runs(default_seeds)
        for raw in self.experiments:
            own = raw.get("seeds") if isinstance(raw, Mapping) else None
            runs += len(own) if isinstance(own, list) else default_seeds
        if not self.grid and not self.experiments:
            runs = default_seeds
        return runs

    def _grid_runs(self, default_seeds: int) -> int:
        """Runs of the grid's cells: a grid over ``seeds`` gives each cell the seeds of its
        value (counted as they are, not as one seed per cell)."""
        if not self.grid:
            return 0
        others = math.prod(len(values) for path, values in self.grid.items() if path != "seeds")
        if "seeds" not in self.grid:
            return others * default_seeds
        per_value = [len(v) if isinstance(v, list) else 1 for v in self.grid["seeds"]]
        return others * sum(per_value)


class StudyTooLargeError(ValueError):
    """A study with more cells or runs than one request may create."""


def check_study_size(study: StudySpec, *, max_cells: int, max_runs: int) -> None:
    """Refuse a study past the caps, naming the cap and the count, before expanding it."""
    cells, runs = study.cell_count(), study.run_count()
    if cells > max_cells:
        raise StudyTooLargeError(
            f"the study has {cells} cells; at most {max_cells} per request "
            f"(GRADLAB_MAX_STUDY_CELLS), {cells - max_cells} too many"
        )
    if runs > max_runs:
        raise StudyTooLargeError(
            f"the study asks for {runs} runs (cells x seeds); at most {max_runs} per request "
            f"(GRADLAB_MAX_STUDY_RUNS), {runs - max_runs} too many"
        )


@dataclass(frozen=True)
class StudyCell:
    """One experiment of a study: where it sits in the grid and its validated spec."""

    coordinates: dict[str, Any]
    spec: ExperimentSpec
    position: int = 0
    source: Literal["grid", "explicit", "base"] = field(default="grid")

    @property
    def name(self) -> str:
        return self.spec.name


def expand(study: StudySpec, scale: str | None = None) -> list[StudyCell]:
    """Every cell of ``study`` (grid cells first, then explicit ones) at ``scale``.

    Raises ``ValueError`` naming the cell when a combination is not a valid spec or two cells
    share a name or a configuration.
    """
    scale = study.scale if scale is None else scale
    cells: list[StudyCell] = []
    if study.grid:
        paths = list(study.grid)
        for values in itertools.product(*(study.grid[p] for p in paths)):
            coordinates = dict(zip(paths, values, strict=True))
            name = _grid_cell_name(study, coordinates)
            spec = _build(study, {**coordinates, "name": name}, where=f"grid cell {coordinates}")
            cells.append(StudyCell(coordinates, spec, len(cells), "grid"))
    for index, raw in enumerate(study.experiments):
        where = f"experiments[{index}]"
        overrides = _flatten(raw, where)
        if "name" not in overrides:
            raise ValueError(f"{where}: an explicit experiment needs a name")
        spec = _build(study, overrides, where=f"{where} ({overrides['name']})")
        coordinates = {k: v for k, v in overrides.items() if k not in ("name", "seeds")}
        cells.append(StudyCell(coordinates, spec, len(cells), "explicit"))
    if not cells:
        spec = _build(study, {}, where="base")
        cells.append(StudyCell({}, spec, 0, "base"))
    _check_distinct(cells)
    return [
        StudyCell(c.coordinates, apply_scale(c.spec, scale), c.position, c.source) for c in cells
    ]


def load_study(
    text: str, *, source: str = "study", max_cells: int | None = None, max_runs: int | None = None
) -> StudySpec:
    """Parse a YAML or JSON study and validate every cell; raises ``ValueError`` with every
    problem and its place. With ``max_cells``/``max_runs`` the study's size is checked (by
    counting) before any cell is built."""
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{source}: not valid YAML/JSON: {exc}") from exc
    if not isinstance(data, Mapping):
        raise ValueError(f"{source}: a study must be a mapping with name, base, grid/experiments")
    try:
        study = StudySpec.model_validate(data)
    except ValidationError as exc:
        raise ValueError(f"{source}: {_problems(exc, 'study')}") from None
    try:
        if max_cells is not None and max_runs is not None:
            check_study_size(study, max_cells=max_cells, max_runs=max_runs)
        expand(study, scale="full")  # every cell valid, named in the error when not
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None
    return study


# --- helpers --------------------------------------------------------------------------------


def _problems(exc: ValidationError, top: str) -> str:
    """Every error as 'field.path: reason', without pydantic's 'Value error, ' prefix."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or top}: {err['msg'].removeprefix('Value error, ')}"
        for err in exc.errors()
    )


def _check_path(path: str) -> None:
    """Refuse a field path that is not in the spec, naming the valid ones at that level."""
    model: type[BaseModel] = ExperimentSpec
    parts = path.split(".")
    for depth, part in enumerate(parts):
        fields = model.model_fields
        if part not in fields:
            here = ".".join(parts[:depth]) or "the spec"
            known = ", ".join(fields)
            raise ValueError(f"{path!r}: {here} has no field {part!r} (fields: {known})")
        annotation = fields[part].annotation
        if depth < len(parts) - 1:
            if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                raise ValueError(f"{path!r}: {part!r} is not a nested section")
            model = annotation


def _flatten(raw: Mapping[str, Any], where: str, prefix: str = "") -> dict[str, Any]:
    """Nested partial spec -> dotted paths (``{"hyperparameters": {"weight_decay": x}}``)."""
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: must be a mapping of spec fields")
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, where, prefix=f"{path}."))
        else:
            try:
                _check_path(path)
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None
            flat[path] = value
    return flat


def _build(study: StudySpec, overrides: Mapping[str, Any], *, where: str) -> ExperimentSpec:
    updates = dict(overrides)
    if "seeds" not in updates and study.seeds is not None:
        updates["seeds"] = list(study.seeds)
    try:
        return study.base.with_updates(updates)
    except ValidationError as exc:
        raise ValueError(f"{where}: {_problems(exc, 'spec')}") from None


_INTEGER_PADDING = re.compile(r"0[1-9]d")


def _parse_template(template: str) -> list[tuple[str, str | None, str]]:
    """(literal text, field name or None, format spec) of each part; ValueError for anything
    beyond plain substitution: attribute or index access, conversions, nested fields."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"name_template {template!r}: {exc}") from None
    parts: list[tuple[str, str | None, str]] = []
    for literal, field_name, spec, conversion in parsed:
        if field_name is not None:
            if not field_name.isidentifier():
                raise ValueError(
                    f"name_template {template!r}: {{{field_name}}} is not a plain field name "
                    "(no attribute or index access, no positional fields)"
                )
            if conversion is not None:
                raise ValueError(f"name_template {template!r}: conversions (!{conversion}) "
                                 "are not allowed")
            if spec and ("{" in spec or "}" in spec):
                raise ValueError(f"name_template {template!r}: nested fields are not allowed")
        parts.append((literal, field_name, spec or ""))
    return parts


def _template_value(field_name: str, value: Any, spec: str) -> str:
    if isinstance(value, bool):
        return spec if value else ""
    if spec == "":
        return str(value)
    if isinstance(value, int) and _INTEGER_PADDING.fullmatch(spec):
        return format(value, spec)
    raise ValueError(
        f"{{{field_name}:{spec}}}: only {{flag:text}} for booleans and zero-padding such as "
        "{depth:02d} for integers are allowed"
    )


def render_name_template(template: str, values: Mapping[str, Any]) -> str:
    """The template with each ``{field}`` replaced by its value (see :class:`StudySpec`)."""
    out: list[str] = []
    for literal, field_name, spec in _parse_template(template):
        out.append(literal)
        if field_name is None:
            continue
        if field_name not in values:
            raise ValueError(f"{field_name!r} is not a coordinate")
        out.append(_template_value(field_name, values[field_name], spec))
    return "".join(out)


def _grid_cell_name(study: StudySpec, coordinates: Mapping[str, Any]) -> str:
    by_leaf: dict[str, Any] = {}
    for path, value in coordinates.items():
        leaf = path.rsplit(".", 1)[-1]
        if leaf in by_leaf:
            raise ValueError(f"grid paths share the last part {leaf!r}; rename via experiments")
        by_leaf[leaf] = value
    if study.name_template is not None:
        try:
            return render_name_template(study.name_template, by_leaf)
        except ValueError as exc:
            raise ValueError(
                f"name_template {study.name_template!r}: {exc!s} "
                f"(coordinates: {', '.join(by_leaf)})"
            ) from None
    tokens = []
    for leaf, value in by_leaf.items():
        if isinstance(value, bool):
            tokens.append(leaf if value else f"no_{leaf}")
        else:
            tokens.append(f"{leaf}{value}")
    return "-".join([study.base.name, *tokens])


def _config_key(spec: ExperimentSpec) -> str:
    data = spec.model_dump(mode="json", exclude={"name", "seeds"})
    return repr(sorted(data.items()))


def _check_distinct(cells: list[StudyCell]) -> None:
    names: dict[str, int] = {}
    configs: dict[str, str] = {}
    for cell in cells:
        if cell.name in names:
            raise ValueError(f"two cells are named {cell.name!r}; give each cell its own name")
        names[cell.name] = cell.position
        key = _config_key(cell.spec)
        if key in configs:
            raise ValueError(
                f"cells {configs[key]!r} and {cell.name!r} have the same configuration; "
                "list it once (with all its seeds)"
            )
        configs[key] = cell.name
