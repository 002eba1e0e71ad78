"""`gradlab bench --processes N`: N runs as N processes sharing one device, the other way to
fill a GPU than a fused pack of N (``pack_benchmark``).

Each of N child processes (spawned: a CUDA context does not survive a fork) trains one run as
a worker child does with ``GRADLAB_GPU_SHARING=processes``: a pack of one (``fused_step``:
bf16 autocast on CUDA, channels_last, gradient-flow capture, Adam; the forward compiled into
CUDA graphs when ``cuda_graphs``, as ``fit_pack`` does), batch 100, on a fixed random batch.

Measuring over a common window: every child warms up (allocator, kernel selection, graph
capture) and says so, then keeps stepping; once all are ready the parent opens the window
[start, end], which therefore only sees children in their steady state. A child synchronises
the device every ``sync_every`` steps and records (time, steps done) there, from its "ready"
(0 steps) until its first record after ``end``; its steps in the window are read off those
records at ``start`` and ``end`` (linear between two records). Every child steps throughout the
window, so the aggregate images/s is the sum of their rates. Times are ``time.monotonic()``,
one clock for every process on Linux (CLOCK_MONOTONIC). Nothing here asserts on time.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import queue
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from multiprocessing.synchronize import Event
from typing import Any

import torch

from gradlab.core.benchmark import BATCH, DEPTHS
from gradlab.core.environment import describe_environment, resolve_device
from gradlab.core.pack_benchmark import fused_steps, make_trainers

# Seconds a child may take to build, compile and warm up before the measurement is abandoned
# (CUDA graphs of VGG38 compile in tens of seconds; eight children compile at once).
READY_TIMEOUT = 600.0
# Between the last child's "ready" and the window's start: every child is past its first
# post-warm-up sync by then.
SETTLE_SECONDS = 1.0


@dataclass(frozen=True)
class ProcessesBench:
    processes: int
    images_per_s: float
    per_process_images_per_s: list[float]
    window_seconds: float
    steps_in_window: list[float]
    sync_every: int


@dataclass(frozen=True)
class _ChildPlan:
    index: int
    depth: int
    device: str
    cuda_graphs: bool
    warmup_steps: int
    sync_every: int
    torch_threads: int | None


class SharingError(RuntimeError):
    """The measurement could not be made (a child failed or never got ready)."""


def _child(plan: _ChildPlan, messages: Any, window: Any, window_open: Event) -> None:
    """One run's training steps until past the window's end; records sent to the parent."""
    try:
        if plan.torch_threads is not None:
            torch.set_num_threads(plan.torch_threads)
        dev = torch.device(plan.device)
        step = fused_steps(make_trainers(plan.depth, 1, dev, first_seed=plan.index), dev,
                           plan.sync_every, plan.cuda_graphs)
        for _ in range(max(1, plan.warmup_steps // plan.sync_every)):
            step()
        _sync(dev)
        records: list[tuple[float, int]] = [(time.monotonic(), 0)]
        messages.put(("ready", plan.index, None))
        steps = 0
        while True:
            step()
            _sync(dev)
            steps += plan.sync_every
            now = time.monotonic()
            records.append((now, steps))
            if window_open.is_set() and now > window[1]:
                break
        messages.put(("done", plan.index, {"records": records,
                                           "environment": describe_environment(dev)}))
    except BaseException as exc:  # the parent reports it; a child must never hang the parent
        messages.put(("failed", plan.index, f"{type(exc).__name__}: {exc}"))


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def steps_at(records: list[tuple[float, int]], when: float) -> float:
    """Steps done at ``when``, linear between the two records around it."""
    for (t0, s0), (t1, s1) in itertools.pairwise(records):
        if t0 <= when <= t1:
            return s0 + (s1 - s0) * (when - t0) / (t1 - t0) if t1 > t0 else float(s1)
    raise SharingError(f"no records around {when:.3f} (from {records[0][0]:.3f} to "
                       f"{records[-1][0]:.3f})")


def _rate_in_window(records: list[tuple[float, int]], start: float, end: float,
                    ) -> tuple[float, float]:
    """(images/s, steps) of one process between ``start`` and ``end``."""
    steps = steps_at(records, end) - steps_at(records, start)
    return steps * BATCH / (end - start), steps


def _collect(messages: Any, wanted: str, count: int, timeout: float,
             children: list[Any]) -> dict[int, Any]:
    """``count`` messages of kind ``wanted``; a failure or a silent death ends the wait."""
    got: dict[int, Any] = {}
    deadline = time.monotonic() + timeout
    while len(got) < count:
        try:
            kind, index, payload = messages.get(timeout=1.0)
        except queue.Empty:
            dead = [i for i, c in enumerate(children) if c.exitcode not in (None, 0)]
            if dead:
                raise SharingError(f"process {dead[0]} died (exit code "
                                   f"{children[dead[0]].exitcode})") from None
            if time.monotonic() > deadline:
                raise SharingError(f"{count - len(got)} process(es) not {wanted} after "
                                   f"{timeout:.0f} s") from None
            continue
        if kind == "failed":
            raise SharingError(f"process {index} failed: {payload}")
        if kind == wanted:
            got[index] = payload
    return got


def bench_processes(name: str, count: int, device: str, *, cuda_graphs: bool = True,
                    window_seconds: float = 20.0, warmup_steps: int | None = None,
                    sync_every: int | None = None) -> tuple[ProcessesBench, dict[str, Any]]:
    """``count`` processes training one ``name`` run each; their aggregate rate over one common
    window, and the environment a child saw."""
    if count < 1:
        raise ValueError(f"processes must be at least 1, got {count}")
    dev = resolve_device(device)
    on_gpu = dev.type == "cuda"
    sync_every = sync_every or (10 if on_gpu else 1)
    warmup_steps = warmup_steps if warmup_steps is not None else (30 if on_gpu else 2)
    # On the CPU N processes share the cores; each takes its part instead of all of them.
    threads = None if on_gpu else max(1, (os.cpu_count() or 1) // count)
    ctx = multiprocessing.get_context("spawn")
    messages = ctx.Queue()
    window = ctx.Array("d", [0.0, 0.0])
    window_open = ctx.Event()
    children = [ctx.Process(target=_child, args=(
        _ChildPlan(i, DEPTHS[name], str(dev), cuda_graphs, warmup_steps, sync_every, threads),
        messages, window, window_open), daemon=True) for i in range(count)]
    for child in children:
        child.start()
    try:
        _collect(messages, "ready", count, READY_TIMEOUT, children)
        start = time.monotonic() + SETTLE_SECONDS
        window[0], window[1] = start, start + window_seconds
        window_open.set()
        done = _collect(messages, "done", count, SETTLE_SECONDS + window_seconds + READY_TIMEOUT,
                        children)
    finally:
        for child in children:
            child.join(timeout=30)
            if child.is_alive():
                child.kill()
    rates = [_rate_in_window(done[i]["records"], start, start + window_seconds)
             for i in range(count)]
    bench = ProcessesBench(processes=count, images_per_s=sum(r for r, _ in rates),
                           per_process_images_per_s=[r for r, _ in rates],
                           window_seconds=window_seconds,
                           steps_in_window=[round(s, 1) for _, s in rates],
                           sync_every=sync_every)
    return bench, done[0]["environment"]


def run_processes_benchmark(device: str = "auto", *, counts: tuple[int, ...] = (1, 2, 4, 8),
                            models: tuple[str, ...] = ("vgg08", "vgg38"),
                            cuda_graphs: bool = True, window_seconds: float | None = None,
                            progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Every (model, process count) as one JSON-ready dict, shaped like the pack benchmark's."""
    dev = resolve_device(device)
    say = progress or (lambda _msg: None)
    window = window_seconds or (20.0 if dev.type == "cuda" else 5.0)
    out: dict[str, Any] = {
        "batch_size_per_run": BATCH,
        "cuda_graphs": cuda_graphs and dev.type == "cuda",
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "method": f"N spawned processes, one run each (a pack of one); aggregate = sum of "
                  f"each process's rate over one common {window:g} s window after warm-up",
    }
    for name in models:
        rows = []
        for count in counts:
            say(f"{name} processes {count}")
            bench, environment = bench_processes(name, count, device, cuda_graphs=cuda_graphs,
                                                 window_seconds=window)
            out["environment"] = environment
            rows.append(asdict(bench))
        out[name] = rows
    return out
