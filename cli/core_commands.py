"""Local verbs on the core engine: `gradlab model`, `gradlab train`, `gradlab bench`,
`gradlab data download`.

Problems a user can fix (invalid spec, missing data, unknown device, foreign checkpoint) are
printed as one ``error:`` line with exit code 2, never a traceback.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

# The verbs this module adds to `gradlab` (cli.py merges every module's).
commands = typer.Typer()

data_app = typer.Typer(help="The CIFAR data sets.", no_args_is_help=True)
commands.add_typer(data_app, name="data")
DATA_DIR_HELP = "CIFAR folder (else GRADLAB_DATA_DIR, else ./data)"
BenchPrecision = Literal["auto", "fp32", "bf16", "both"]
# None: the benchmark's own choice (core.benchmark.bench_precisions)
BENCH_PRECISIONS: dict[str, Any] = {"auto": None, "fp32": ("fp32",), "bf16": ("bf16",),
                                    "both": ("fp32", "bf16")}


class UserError(Exception):
    """Something the user can fix; printed without a traceback."""


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(2)


def _validation_message(exc: Exception) -> str:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "spec"
            parts.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
        return "invalid spec: " + "; ".join(parts)
    return str(exc)


def _spec_from(spec_file: Path | None, overrides: dict[str, Any]) -> Any:
    """The spec file (or the defaults), with every flag that was given laid over it."""
    from pydantic import ValidationError

    from gradlab.science.spec import ExperimentSpec, apply_dotted_updates

    base: dict[str, Any] = {}
    if spec_file is not None:
        base = _read_spec_file(spec_file)
    given = {path: value for path, value in overrides.items() if value is not None}
    merged = apply_dotted_updates(base, given)
    try:
        return ExperimentSpec.model_validate(merged)
    except ValidationError as exc:
        raise UserError(_validation_message(exc)) from None


def _read_spec_file(path: Path) -> dict[str, Any]:
    import yaml

    try:
        text = path.read_text()
    except OSError as exc:
        raise UserError(f"cannot read spec file {path}: {exc.strerror}") from None
    try:
        loaded = yaml.safe_load(text)  # YAML is a superset of JSON: one parser for both
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML/JSON: {exc}") from None
    if not isinstance(loaded, dict):
        raise UserError(f"{path} must hold a mapping (the experiment spec)")
    return loaded


@commands.command("model")
def model_command(
    depth: Annotated[int | None, typer.Option(help="6k+2: 8, 14, ..., 38")] = None,
    blocks_per_stage: Annotated[int | None, typer.Option(help="instead of --depth")] = None,
    width: Annotated[int | None, typer.Option(help="filters per conv (default 32)")] = None,
    batch_norm: Annotated[bool, typer.Option("--batch-norm", help="BN after every conv")] = False,
    residual: Annotated[bool, typer.Option("--residual", help="identity skips")] = False,
    reduction_skip: Annotated[
        str | None, typer.Option(help="skip over reduction blocks: none or avgpool")
    ] = None,
    dataset: Annotated[str | None, typer.Option(help="cifar100 or cifar10")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Build a model and print its parameter count and gradient-flow layers in depth order."""
    from gradlab.core.architectures import build_model, count_parameters

    try:
        spec = _spec_from(None, {
            "depth": depth, "blocks_per_stage": blocks_per_stage, "width": width,
            "batch_norm": batch_norm, "residual": residual, "reduction_skip": reduction_skip,
            "data.dataset": dataset,
        })
    except UserError as exc:
        raise _fail(str(exc)) from None
    model = build_model(spec)
    info = {"depth": spec.depth, "parameters": count_parameters(model),
            "layers": model.gradflow_layer_names()}
    if as_json:
        typer.echo(json.dumps(info))
        return
    typer.echo(f"VGG depth {spec.depth} (blocks per stage {spec.num_blocks}, width {spec.width}, "
               f"BN {'on' if spec.batch_norm else 'off'}, residual "
               f"{'on' if spec.residual else 'off'}): {info['parameters']:,} parameters")
    for i, name in enumerate(info["layers"]):
        typer.echo(f"{i:4d}  {name}")


@commands.command("train")
def train_command(
    spec_file: Annotated[Path | None, typer.Option("--spec", help="spec file (YAML or JSON); "
                                                  "flags given override it")] = None,
    depth: Annotated[int | None, typer.Option(help="6k+2: 8, 14, ..., 38")] = None,
    width: Annotated[int | None, typer.Option()] = None,
    batch_norm: Annotated[bool | None, typer.Option("--batch-norm/--no-batch-norm")] = None,
    residual: Annotated[bool | None, typer.Option("--residual/--no-residual")] = None,
    reduction_skip: Annotated[str | None, typer.Option(help="none or avgpool")] = None,
    optimizer: Annotated[str | None, typer.Option(help="adam or sgd")] = None,
    epochs: Annotated[int | None, typer.Option()] = None,
    batch_size: Annotated[int | None, typer.Option()] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="(maximum) learning rate")] = None,
    min_lr: Annotated[float | None, typer.Option("--min-lr", help="cosine floor")] = None,
    schedule: Annotated[str | None, typer.Option(help="cosine or constant")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="coupled L2")] = None,
    momentum: Annotated[float | None, typer.Option(help="SGD only")] = None,
    nesterov: Annotated[bool | None, typer.Option("--nesterov/--no-nesterov")] = None,
    dataset: Annotated[str | None, typer.Option(help="cifar100 or cifar10")] = None,
    train_limit: Annotated[int | None, typer.Option(help="first N training images")] = None,
    val_limit: Annotated[int | None, typer.Option(help="first N validation images")] = None,
    test_limit: Annotated[int | None, typer.Option(help="first N test images")] = None,
    augment: Annotated[bool | None, typer.Option("--augment/--no-augment")] = None,
    seed: Annotated[int | None, typer.Option(help="default: the spec's first seed")] = None,
    data_dir: Annotated[Path | None, typer.Option(help=DATA_DIR_HELP)] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N")] = "auto",
    out: Annotated[Path, typer.Option(help="folder for result.json and the figures")] = Path(
        "runs/train"),
    resume: Annotated[bool, typer.Option("--resume", help="go on from OUT/checkpoint.pt")] = False,
    compile_model: Annotated[bool, typer.Option("--compile", help="torch.compile (CUDA)")] = False,
) -> None:
    """Train one run locally; writes OUT/result.json, OUT/gradflow.png and OUT/checkpoint.pt.

    Exit code 0 when it finished, 1 when it diverged, 2 on a usage or data error.
    """
    try:
        spec = _spec_from(spec_file, {
            "depth": depth, "width": width, "batch_norm": batch_norm, "residual": residual,
            "reduction_skip": reduction_skip,
            "hyperparameters.optimizer": optimizer, "hyperparameters.epochs": epochs,
            "hyperparameters.batch_size": batch_size, "hyperparameters.learning_rate": lr,
            "hyperparameters.min_learning_rate": min_lr, "hyperparameters.lr_schedule": schedule,
            "hyperparameters.weight_decay": weight_decay, "hyperparameters.momentum": momentum,
            "hyperparameters.nesterov": nesterov, "data.dataset": dataset,
            "data.train_limit": train_limit, "data.val_limit": val_limit,
            "data.test_limit": test_limit, "data.augment": augment,
            "seeds": None if seed is None else [seed],
        })
        _train(spec, spec.seeds[0], data_dir, device, out, resume, compile_model)
    except UserError as exc:
        raise _fail(str(exc)) from None


def _train(spec: Any, seed: int, data_dir: Path | None, device: str, out: Path, resume: bool,
           compile_model: bool) -> None:
    from rich.console import Console

    from gradlab.core.checkpoints import CheckpointError
    from gradlab.core.data import DataFormatError, DataNotFoundError, ensure_data, load_cifar
    from gradlab.core.data_download import DownloadError
    from gradlab.core.training_loop import fit
    from gradlab.science.records import EpochDecision, RunOutcome
    from gradlab.settings import get_worker_settings
    from gradlab.worker.stopping import stop_on_signals

    console = Console()
    checkpoint_path = out / "checkpoint.pt"
    blob = None
    if resume:
        if not checkpoint_path.is_file():
            raise UserError(f"--resume: no checkpoint at {checkpoint_path}")
        blob = checkpoint_path.read_bytes()
    try:
        root = ensure_data(data_dir, spec.data.dataset, download=True, show_progress=True)
        data = load_cifar(root, spec.data.dataset)
    except (DataNotFoundError, DataFormatError, DownloadError) as exc:
        raise UserError(str(exc)) from None
    out.mkdir(parents=True, exist_ok=True)

    console.print(f"training [bold]{spec.name}[/bold]: depth {spec.depth}, BN "
                  f"{'on' if spec.batch_norm else 'off'}, residual "
                  f"{'on' if spec.residual else 'off'}, seed {seed}, {spec.hyperparameters.epochs}"
                  f" epochs on {data.source}")
    # The worker's cooperative stop: the first Ctrl-C stops at the end of the epoch in
    # progress (its checkpoint written), the second at once (that epoch discarded).
    with stop_on_signals(get_worker_settings().shutdown_grace_seconds, sigint=True,
                         announce=lambda text: console.print(f"[yellow]{text}[/yellow]")
                         ) as stop:

        def save_epoch(metrics: Any, gradflow: Any, checkpoint: Any) -> EpochDecision:
            del metrics, gradflow  # result.json is written from the result at the end
            _write_atomic(checkpoint_path, checkpoint())
            return EpochDecision.STOP if stop.requested else EpochDecision.CONTINUE

        try:
            result = fit(spec, seed, data, device=device, on_epoch_end=save_epoch,
                         resume_from=blob, show_progress=True, compile_model=compile_model,
                         abandon=stop.abandon)
        except (CheckpointError, ValueError) as exc:
            raise UserError(str(exc)) from None
    if result.status is RunOutcome.STOPPED:
        note = "go on with --resume" if checkpoint_path.is_file() else "no epoch finished"
        console.print(f"[yellow]stopped[/yellow]; the last finished epoch is in "
                      f"{checkpoint_path} ({note})")
        raise typer.Exit(130)
    document = {"spec": spec.model_dump(mode="json"), "seed": seed, **result.to_json_dict()}
    _write_atomic(out / "result.json", json.dumps(_finite(document), indent=1).encode())
    _write_figures(result, out, f"{spec.name} (depth {spec.depth}, seed {seed})")
    _print_summary(console, result, out)
    if result.status is RunOutcome.DIVERGED:
        raise typer.Exit(1)


def _finite(value: Any) -> Any:
    """JSON has no NaN/inf: write them as strings (a diverged run's loss is one)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _write_atomic(path: Path, payload: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(payload)
    os.replace(tmp, path)


def _write_figures(result: Any, out: Path, title: str) -> None:
    from gradlab.science.gradflow_figure import plot_gradflow

    if not result.gradflow:
        return
    epochs = [g.epoch for g in result.gradflow]
    values = result.gradflow_matrix("last_batch", "mean_abs")
    for name, log_scale in (("gradflow.png", False), ("gradflow_log.png", True)):
        figure = plot_gradflow(list(result.layers), epochs, values,
                               title=f"Gradient flow, {title}", log_scale=log_scale)
        figure.savefig(out / name, dpi=120)


def _print_summary(console: Any, result: Any, out: Path) -> None:
    from rich.table import Table

    table = Table(title=f"status: {result.status}")
    for column in ("epoch", "train loss", "train acc", "val loss", "val acc", "lr", "seconds"):
        table.add_column(column, justify="right")
    for e in result.epochs:
        table.add_row(str(e.epoch), f"{e.train_loss:.4f}", f"{e.train_acc:.4f}",
                      f"{e.val_loss:.4f}", f"{e.val_acc:.4f}", f"{e.lr:.2e}", f"{e.seconds:.1f}")
    console.print(table)
    if result.test is not None:
        console.print(f"test (best validation epoch {result.test.best_epoch}): loss "
                      f"{result.test.loss:.4f}, acc {result.test.acc:.4f}")
    if result.divergence is not None:
        d = result.divergence
        console.print(f"[red]diverged[/red] at epoch {d.epoch}, step {d.step} (loss {d.loss})")
    console.print(f"wrote {out / 'result.json'}, {out / 'gradflow.png'}")


@commands.command("bench")
def bench_command(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON only")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N")] = "auto",
    models: Annotated[str, typer.Option(help="comma-separated: vgg08,vgg38")] = "vgg08,vgg38",
    steps: Annotated[int | None, typer.Option(min=1, help="steps per timing (default: by "
                                                          "device and model)")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="one repeat each (a smoke check)")] = False,
    threads: Annotated[int | None, typer.Option(min=1, help="torch CPU threads (default: "
                                                            "torch's choice)")] = None,
    pack: Annotated[str | None, typer.Option(
        "--pack", help="fused packs instead: N (sizes 1, 2, 4, ... up to N) or a list "
                       "such as 1,2,4,8,16; aggregate images/s and the ratio to N separate "
                       "steps")] = None,
    cuda_graphs: Annotated[bool, typer.Option(
        "--cuda-graphs/--no-cuda-graphs", help="with --pack or --processes on CUDA: compile "
                                               "the fused forward into CUDA graphs")] = True,
    processes: Annotated[str | None, typer.Option(
        "--processes", help="N runs as N processes sharing the device instead (sizes as for "
                            "--pack): aggregate images/s over one common window")] = None,
    window: Annotated[float | None, typer.Option(
        min=0.1, help="with --processes: seconds of the common window (default: 20 on CUDA, "
                      "5 on the CPU)")] = None,
    precision: Annotated[BenchPrecision, typer.Option(
        help="auto: fp32 and bf16 side by side where the CPU has bf16 units, else the one "
             "training picks; or fp32, bf16, both")] = "auto",
) -> None:
    """Measure matmul peak, VGG08/VGG38 step and epoch rates and gradient-flow overhead."""
    from gradlab.core.benchmark import FORWARD_MFLOP, run_benchmark

    chosen = tuple(m.strip() for m in models.split(",") if m.strip())
    unknown = [m for m in chosen if m not in FORWARD_MFLOP]
    if unknown or not chosen:
        raise _fail(f"--models takes {', '.join(FORWARD_MFLOP)}; got {models!r}")
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    if pack is not None:
        _bench_packs(_pack_sizes(pack), chosen, device, steps, quick, cuda_graphs, as_json)
        return
    if processes is not None:
        _bench_processes(_pack_sizes(processes, "--processes"), chosen, device, cuda_graphs,
                         window, as_json)
        return
    report = _measure(as_json, lambda progress: run_benchmark(
        device, models=chosen, steps=None if steps is None else dict.fromkeys(chosen, steps),
        quick=quick, precisions=BENCH_PRECISIONS[precision], progress=progress))
    if report is not None:
        _print_bench(report, chosen)


def _measure(as_json: bool, run: Callable[[Callable[[str], None] | None], dict[str, Any]],
             refused: tuple[type[Exception], ...] = (ValueError,)) -> dict[str, Any] | None:
    """A benchmark's report (``run(progress)``), for the caller to print as a table; with
    --json the report is printed here and None returned. Progress lines go to stderr, none
    with --json; a refusal (``refused``) is an error line and exit code 2."""
    try:
        report = run(None if as_json else lambda m: typer.echo(f"measuring {m} ...", err=True))
    except refused as exc:
        raise _fail(str(exc)) from None
    if as_json:
        typer.echo(json.dumps(report, indent=1))
        return None
    return report


def _machine(report: dict[str, Any]) -> str:
    """When and where a benchmark measured: date, device, processor, CPUs, threads, torch."""
    env = report["environment"]
    return (f"{report['measured_at']}  {env['device']} ({env['processor']}, "
            f"{env['cpu_count']} CPUs, {env['torch_threads']} torch threads), torch "
            f"{env['torch']}")


def _print_bench(report: dict[str, Any], chosen: tuple[str, ...]) -> None:
    typer.echo(f"{_machine(report)}, batch {report['batch_size']}; training's auto "
               f"precision: {report['precision']}")
    by_precision = report["by_precision"]
    for figures in by_precision.values():
        typer.echo(f"matmul {figures['matmul_dtype']} peak: {figures['matmul_gflops']:.1f} "
                   f"GFLOP/s ({figures['matmul_backend']})")
    typer.echo(f"{'model':6}  {'prec':4}  {'step img/s':>10}  {'of peak':>7}  "
               f"{'epoch img/s':>11}  {'epoch/step':>10}  {'gradflow':>8}  {'(A/B)':>7}  "
               f"{'convs alone':>11}")
    for name in chosen:
        for p, figures in by_precision.items():
            r = figures[name]
            typer.echo(f"{name:6}  {p:4}  {r['step_images_per_s']:10.1f}  "
                       f"{r['step_fraction_of_peak']:7.1%}  {r['epoch_images_per_s']:11.1f}  "
                       f"{r['epoch_fraction_of_step']:10.1%}  {r['gradflow_overhead']:+8.2%}  "
                       f"{r['gradflow_overhead_ab']:+7.2%}  {r['conv_fraction_of_peak']:11.1%}")
    if {"fp32", "bf16"} <= set(by_precision):
        typer.echo("bf16 / fp32: " + ", ".join(
            f"{name} step {_ratio(by_precision, name, 'step_images_per_s')}, epoch "
            f"{_ratio(by_precision, name, 'epoch_images_per_s')}" for name in chosen))


def _ratio(by_precision: dict[str, Any], name: str, key: str) -> str:
    return f"{by_precision['bf16'][name][key] / by_precision['fp32'][name][key]:.2f}x"


def _pack_sizes(text: str, option: str = "--pack") -> tuple[int, ...]:
    """``16`` -> (1, 2, 4, 8, 16); ``1,4,6`` -> (1, 4, 6); ``4,`` -> (4,) (a list of one)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise _fail(f"{option} takes N or a list such as 1,2,4; got {text!r}") from None
    if not values or min(values) < 1 or max(values) > 64:
        raise _fail(f"{option} sizes must lie in 1..64; got {text!r}")
    if "," in text:
        return tuple(values)
    sizes = [1 << i for i in range(values[0].bit_length()) if 1 << i < values[0]]
    return (*sizes, values[0])


def _bench_packs(sizes: tuple[int, ...], models: tuple[str, ...], device: str,
                 steps: int | None, quick: bool, cuda_graphs: bool, as_json: bool) -> None:
    from gradlab.core.pack_benchmark import run_pack_benchmark

    report = _measure(as_json, lambda progress: run_pack_benchmark(
        device, sizes=sizes, models=models, steps=steps, quick=quick, cuda_graphs=cuda_graphs,
        progress=progress))
    if report is None:
        return
    typer.echo(f"{_machine(report)}, batch {report['batch_size_per_run']} per run, CUDA graphs "
               f"{'on' if report['cuda_graphs'] else 'off'}")
    typer.echo(f"{'model':6}  {'pack':>4}  {'fused img/s':>11}  {'alone img/s':>11}  "
               f"{'vs N separate':>13}")
    for name in models:
        for r in report[name]:
            typer.echo(f"{name:6}  {r['pack']:4d}  {r['images_per_s']:11.1f}  "
                       f"{r['single_images_per_s']:11.1f}  {r['ratio_to_separate']:12.2f}x")


def _bench_processes(counts: tuple[int, ...], models: tuple[str, ...], device: str,
                     cuda_graphs: bool, window: float | None, as_json: bool) -> None:
    from gradlab.core.sharing_benchmark import SharingError, run_processes_benchmark

    report = _measure(as_json, lambda progress: run_processes_benchmark(
        device, counts=counts, models=models, cuda_graphs=cuda_graphs, window_seconds=window,
        progress=progress), refused=(ValueError, SharingError))
    if report is None:
        return
    env = report["environment"]
    typer.echo(f"{report['measured_at']}  {env.get('device_name', env['device'])}, torch "
               f"{env['torch']}, batch {report['batch_size_per_run']} per run, CUDA graphs "
               f"{'on' if report['cuda_graphs'] else 'off'}; {report['method']}")
    typer.echo(f"{'model':6}  {'processes':>9}  {'aggregate img/s':>15}  {'per process':>11}")
    for name in models:
        for r in report[name]:
            each = r["images_per_s"] / r["processes"]
            typer.echo(f"{name:6}  {r['processes']:9d}  {r['images_per_s']:15.1f}  {each:11.1f}")


@data_app.command("download")
def download_command(
    dataset: Annotated[str, typer.Option(help="cifar100 or cifar10")] = "cifar100",
    data_dir: Annotated[Path | None, typer.Option(help=DATA_DIR_HELP)] = None,
) -> None:
    """Fetch the official archive (Python pickles), check its MD5 and extract it; a download
    that broke off continues where it stopped (GRADLAB_CIFAR_URL: a mirror)."""
    from gradlab.core.data import DATASETS, resolve_data_dir
    from gradlab.core.data_download import (
        DownloadError,
        archive_for,
        download_cifar,
        download_progress,
    )

    if dataset not in DATASETS:
        raise _fail(f"--dataset must be one of {', '.join(DATASETS)}; got {dataset!r}")
    target = resolve_data_dir(data_dir, must_exist=False)
    archive = archive_for(dataset)
    if (target / archive.folder).is_dir():
        typer.echo(f"{dataset} is already at {target / archive.folder}")
        return
    typer.echo(f"downloading {archive.url} into {target} ...")
    try:
        with download_progress(True, archive.filename) as progress:
            folder = download_cifar(target, dataset, archive=archive, progress=progress)
    except (DownloadError, OSError) as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"{dataset} ready at {folder}")
