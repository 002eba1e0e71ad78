"""Study specs: grid expansion, explicit cells, seeds, names, validation, scale."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gradlab.science.study import (
    MEDIUM,
    SMOKE,
    ReducedScale,
    SmokeScale,
    StudySpec,
    apply_scale,
    expand,
    load_study,
)

ROOT = Path(__file__).resolve().parents[2]


def test_grid_is_the_cartesian_product_over_dotted_paths() -> None:
    study = StudySpec(
        name="g",
        base={"name": "b", "hyperparameters": {"epochs": 5}},
        grid={
            "depth": [8, 14],
            "batch_norm": [False, True],
            "hyperparameters.learning_rate": [1e-3, 1e-2],
        },
        seeds=[1, 2],
    )
    cells = expand(study)
    assert len(cells) == 8
    combos = {
        (c.spec.depth, c.spec.batch_norm, c.spec.hyperparameters.learning_rate) for c in cells
    }
    assert combos == {(d, b, lr) for d in (8, 14) for b in (False, True) for lr in (1e-3, 1e-2)}
    assert all(c.spec.seeds == [1, 2] and c.spec.hyperparameters.epochs == 5 for c in cells)
    assert cells[0].coordinates == {
        "depth": 8,
        "batch_norm": False,
        "hyperparameters.learning_rate": 1e-3,
    }
    assert len({c.name for c in cells}) == 8  # default names are distinct


def test_name_template_shows_flag_text_only_when_true() -> None:
    study = StudySpec(
        name="g",
        grid={"depth": [8, 38], "batch_norm": [False, True]},
        name_template="vgg{depth:02d}{batch_norm:-bn}",
    )
    assert [c.name for c in expand(study)] == ["vgg08", "vgg08-bn", "vgg38", "vgg38-bn"]


def test_explicit_cells_are_partial_overrides_with_their_own_seeds() -> None:
    study = StudySpec(
        name="e",
        base={"name": "b", "depth": 38, "seeds": [0]},
        experiments=[
            {"name": "wd", "hyperparameters": {"weight_decay": 1e-3}, "seeds": [0, 256]},
            {"name": "dotted", "hyperparameters.batch_size": 50, "residual": True},
        ],
    )
    wd, dotted = expand(study)
    assert wd.spec.hyperparameters.weight_decay == 1e-3 and wd.spec.seeds == [0, 256]
    assert wd.coordinates == {"hyperparameters.weight_decay": 1e-3}
    assert dotted.spec.hyperparameters.batch_size == 50 and dotted.spec.residual
    assert dotted.spec.depth == 38 and dotted.spec.seeds == [0]


def test_a_study_with_neither_grid_nor_list_is_its_base() -> None:
    (only,) = expand(StudySpec(name="one", base={"name": "solo", "depth": 14}))
    assert only.name == "solo" and only.spec.depth == 14


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"grid": {"dept": [8]}}, "has no field 'dept'"),
        ({"grid": {"hyperparameters.lr": [1e-3]}}, "hyperparameters has no field 'lr'"),
        ({"grid": {"depth": [37]}}, "depth must be 6k+2 for 3 stages; nearest: 32 or 38"),
        ({"grid": {"depth": []}}, "grid.depth: needs at least one value"),
        ({"experiments": [{"depth": 8}]}, "needs a name"),
        (
            {"experiments": [{"name": "a", "depth": 8}, {"name": "b", "depth": 8}]},
            "have the same configuration",
        ),
        ({"experiments": [{"name": "a"}, {"name": "a", "depth": 14}]}, "two cells are named"),
        ({"colour": "red"}, "Extra inputs are not permitted"),
    ],
)
def test_bad_studies_are_refused_naming_the_problem(data: dict, message: str) -> None:
    with pytest.raises(ValueError) as info:
        load_study(json.dumps({"name": "bad", **data}), source="bad.yaml")
    assert message in str(info.value)
    assert str(info.value).startswith("bad.yaml:")


def test_smoke_scale_shrinks_epochs_data_and_optionally_seeds() -> None:
    spec = expand(StudySpec(name="s", base={"seeds": [0, 1, 2]}))[0].spec
    smoke = apply_scale(spec, "smoke")
    assert smoke.hyperparameters.epochs == SMOKE.epochs
    assert smoke.data.train_limit == SMOKE.train_limit
    assert smoke.data.val_limit == SMOKE.val_limit and smoke.data.test_limit == SMOKE.test_limit
    assert smoke.seeds == [0, 1, 2]
    fewer = apply_scale(spec, "smoke", SmokeScale(max_seeds=1, epochs=1, train_limit=10))
    assert fewer.seeds == [0] and fewer.data.train_limit == 10
    assert apply_scale(spec, "full") == spec
    with pytest.raises(ValueError, match="scale must be one of"):
        apply_scale(spec, "tiny")


def test_the_smoke_scale_is_unchanged_by_the_medium_one() -> None:
    # make demo's findings and timings in the README were measured at exactly this size
    assert ReducedScale(epochs=3, train_limit=3000, val_limit=500, test_limit=1000) == SMOKE
    assert SmokeScale is ReducedScale


def test_medium_scale_trains_longer_on_more_data_with_every_seed() -> None:
    base = {"seeds": [0, 1, 2], "hyperparameters": {"epochs": 100, "weight_decay": 1e-3}}
    spec = expand(StudySpec(name="s", base=base))[0].spec
    medium = apply_scale(spec, "medium")
    assert (medium.hyperparameters.epochs, medium.data.train_limit) == (
        MEDIUM.epochs, MEDIUM.train_limit)
    assert (medium.data.val_limit, medium.data.test_limit) == (MEDIUM.val_limit,
                                                               MEDIUM.test_limit)
    # more training steps than smoke, each image seen more often (so that it can overfit)
    assert MEDIUM.epochs * MEDIUM.train_limit > SMOKE.epochs * SMOKE.train_limit
    assert MEDIUM.epochs > SMOKE.epochs
    assert medium.seeds == [0, 1, 2]
    # only size changes: the schedule and the rest of the spec are the cell's own
    assert medium.hyperparameters.model_dump(exclude={"epochs"}) == (
        spec.hyperparameters.model_dump(exclude={"epochs"}))
    assert medium.model_dump(exclude={"hyperparameters", "data"}) == spec.model_dump(
        exclude={"hyperparameters", "data"})
    # a cell already smaller than the scale keeps its own size
    short = spec.with_updates({"hyperparameters.epochs": 2, "data.train_limit": 100})
    assert apply_scale(short, "medium").hyperparameters.epochs == 2
    assert apply_scale(short, "medium").data.train_limit == 100
    assert expand(StudySpec(name="s", base=base, scale="medium"))[0].spec == medium


def test_the_seed_study_example_is_the_seed_investigation() -> None:
    study = load_study((ROOT / "examples" / "seed-study.yaml").read_text())
    cells = {c.name: c.spec for c in expand(study)}

    def config(name: str) -> tuple:
        s = cells[name]
        return (s.depth, s.batch_norm, s.residual, s.hyperparameters.weight_decay, s.seeds)

    assert config("vgg08") == (8, False, False, 0.0, [0])
    assert config("vgg38") == (38, False, False, 0.0, [0])
    assert config("vgg08-bn") == (8, True, False, 0.0, [0])
    assert config("vgg38-bn") == (38, True, False, 0.0, [0])
    assert config("vgg38-bn-res") == (38, True, True, 0.0, [0])
    assert config("vgg38-bn-res-wd1e-4")[3] == 1e-4
    assert config("vgg38-bn-res-wd1e-3") == (38, True, True, 1e-3, [0, 256, 512, 1024])
    assert config("vgg38-bn-res-wd1e-2")[3] == 1e-2
    assert len(cells) == 8
    full = cells["vgg38"]
    assert full.hyperparameters.epochs == 100 and full.data.train_limit is None
    assert full.hyperparameters.learning_rate == 1e-3 and full.hyperparameters.batch_size == 100


def test_a_study_file_past_the_caps_is_refused_before_expansion() -> None:
    huge = {"name": "huge", "grid": {"width": list(range(1, 1001)),
                                     "hyperparameters.epochs": list(range(1, 1001))}}
    with pytest.raises(ValueError, match="1000000 cells; at most 256"):
        load_study(json.dumps(huge), source="huge.yaml", max_cells=256, max_runs=1024)
