"""scripts/gpu_measure.py: what it measures in which order, how it resumes, and how it decides
between fused packs and processes per GPU (figures made up here; the real ones come from a GPU,
and tests/scripts/test_gpu_check.py runs the whole measure on the CPU)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.scripts.script_modules import load_script

measure = load_script("gpu_measure")


def test_the_alone_rate_and_the_default_pack_size_come_first() -> None:
    keys = [m.key for m in measure.plan(["vgg38"], [1, 2, 4, 8], [1, 2, 4, 8])]
    assert keys[:3] == ["vgg38-packs-graphs-off-1-2-4-8", "vgg38-packs-graphs-on-4",
                        "vgg38-packs-graphs-on-8"]
    assert keys[5:7] == ["vgg38-processes-graphs-on-4", "vgg38-processes-graphs-on-8"]
    assert keys[-1] == "vgg38-processes-graphs-off-1"
    assert len(keys) == 1 + 4 + 4 + 4
    # No CUDA graphs on the CPU: those measurements would repeat the others.
    cpu = [m.key for m in measure.plan(["vgg08"], [1], [1, 2], cuda=False)]
    assert cpu == ["vgg08-packs-graphs-off-1", "vgg08-processes-graphs-off-2",
                   "vgg08-processes-graphs-off-1"]


def test_one_pack_size_is_asked_for_as_a_list_of_one() -> None:
    item = measure.Measurement("vgg38", "packs", True, (4,))
    assert item.argv("gradlab", "cuda", False, None)[-3:] == ["--pack", "4,", "--cuda-graphs"]


def _write(results: Path, key: str, model: str, rows: list[dict[str, float]]) -> None:
    results.mkdir(exist_ok=True)
    env = {"device": "cuda", "device_name": "NVIDIA H100 80GB HBM3"}
    (results / f"{key}.json").write_text(json.dumps({model: rows, "environment": env}))


def _figures(results: Path, pack_rates: dict[int, float], process_rates: dict[int, float],
             ) -> None:
    _write(results, "vgg38-packs-graphs-off-1-4", "vgg38",
           [{"pack": n, "images_per_s": 500.0 * n, "single_images_per_s": 1000.0}
            for n in (1, 4)])
    for n, rate in pack_rates.items():
        _write(results, f"vgg38-packs-graphs-on-{n}", "vgg38",
               [{"pack": n, "images_per_s": rate, "single_images_per_s": 990.0}])
    for n, rate in process_rates.items():
        _write(results, f"vgg38-processes-graphs-on-{n}", "vgg38",
               [{"processes": n, "images_per_s": rate}])


def test_processes_win_only_by_more_than_the_margin(tmp_path: Path) -> None:
    _figures(tmp_path / "a", {1: 1500.0, 4: 4000.0}, {1: 1000.0, 4: 4100.0})
    close = measure.summarise(tmp_path / "a", ["vgg38"], {})
    assert close["decision"]["winner"] == "packs"
    assert close["decision"]["settings"] == {"GRADLAB_GPU_SHARING": "packs",
                                             "GRADLAB_PACK_SIZE": "4"}
    _figures(tmp_path / "b", {1: 1500.0, 4: 4000.0}, {1: 1000.0, 4: 4500.0})
    clear = measure.summarise(tmp_path / "b", ["vgg38"], {})
    assert clear["decision"]["winner"] == "processes"
    assert clear["decision"]["settings"] == {"GRADLAB_GPU_SHARING": "processes",
                                             "GRADLAB_PROCESSES_PER_GPU": "4"}
    assert clear["models"]["vgg38"]["alone_images_per_s"] == 1000.0
    table = measure.table_markdown(clear)
    assert "Device: NVIDIA H100 80GB HBM3" in table
    assert "| 4 | 4,000 (4.00x) | 2,000 (2.00x) | 4,500 (4.50x) |" in table
    assert "Winner on vgg38: processes" in table


def test_no_decision_until_both_are_measured(tmp_path: Path) -> None:
    _figures(tmp_path, {4: 4000.0}, {})
    summary = measure.summarise(tmp_path, ["vgg38"], {"vgg38-processes-graphs-on-4": "out of "
                                                      "time"})
    assert summary["decision"]["winner"] is None
    assert "Not measured: vgg38-processes-graphs-on-4 (out of time)." in measure.table_markdown(
        summary)


def test_a_returned_sharing_json_resumes_on_a_fresh_machine(tmp_path: Path) -> None:
    first = tmp_path / "first"
    _figures(first, {4: 4000.0}, {4: 4100.0})
    (first / "sharing.json").write_text(json.dumps(measure.summarise(first, ["vgg38"], {})))
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "sharing.json").write_text((first / "sharing.json").read_text())
    # Nothing left to measure in the plan below, so no command runs.
    todo = [measure.Measurement("vgg38", "packs", True, (4,)),
            measure.Measurement("vgg38", "processes", True, (4,))]
    assert measure.measure(todo, fresh, deadline=0.0, gradlab="false", device="cuda",
                           quick=False, window=None) == {}
    assert sorted(p.name for p in fresh.glob("vgg38-*.json")) == sorted(
        p.name for p in first.glob("vgg38-*.json"))
