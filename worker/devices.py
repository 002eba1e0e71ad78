"""Worker children per GPU, and which GPU each child sees.

One child per GPU (``GRADLAB_GPU_SHARING=packs``, the default: the child trains fused packs),
or ``GRADLAB_PROCESSES_PER_GPU`` children per GPU (``processes``: each trains one run; the GPU
interleaves their kernels). Children are pinned round robin, so each GPU gets the same number.

The parent (the Celery main process, or ``gradlab worker``) never touches CUDA: a CUDA context
created before fork breaks every child (pytorch/pytorch#68861), and even
``torch.cuda.is_available()`` may create one. So GPUs are counted from ``CUDA_VISIBLE_DEVICES``
or ``nvidia-smi -L``, and each child, after the fork, narrows ``CUDA_VISIBLE_DEVICES`` to its
own GPU before anything imports CUDA state; inside the child that GPU is ``cuda:0``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import MutableMapping

from gradlab.settings import WorkerSettings

# The parent's GPU list, handed to the children through the environment (fork copies it).
WORKER_GPUS_ENV = "GRADLAB_WORKER_GPUS"


def visible_gpus(env: MutableMapping[str, str] | None = None) -> list[str]:
    """The GPU ids this process may use, without initialising CUDA."""
    env = os.environ if env is None else env
    if WORKER_GPUS_ENV in env:
        return _split(env[WORKER_GPUS_ENV])
    if "CUDA_VISIBLE_DEVICES" in env:
        return _split(env["CUDA_VISIBLE_DEVICES"])
    return [str(i) for i in range(_nvidia_smi_count())]


def _split(value: str) -> list[str]:
    ids = [part.strip() for part in value.split(",") if part.strip()]
    # CUDA stops at the first invalid id; "-1" is the conventional "no GPU".
    if ids and ids[0].startswith("-"):
        return []
    return ids


def _nvidia_smi_count() -> int:
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return 0
    try:
        listing = subprocess.run(
            [binary, "-L"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in listing.splitlines() if line.startswith("GPU "))


def children_per_gpu(settings: WorkerSettings) -> int:
    """Worker children that share one GPU: ``processes_per_gpu`` with ``gpu_sharing`` set to
    processes, else one (which trains fused packs)."""
    return settings.processes_per_gpu if settings.gpu_sharing == "processes" else 1


def worker_concurrency(requested: int | None, env: MutableMapping[str, str] | None = None,
                       per_gpu: int = 1) -> int:
    """Children to start: the request, else ``per_gpu`` per visible GPU, else one (CPU: one run
    uses every core through PyTorch's threads; two would only fight over them)."""
    if requested is not None:
        if requested < 1:
            raise ValueError(f"--concurrency must be at least 1, got {requested}")
        return requested
    return max(1, len(visible_gpus(env)) * per_gpu)


def publish_gpus_to_children(env: MutableMapping[str, str] | None = None) -> list[str]:
    """In the parent, before forking: record the GPU list the children share out."""
    env = os.environ if env is None else env
    gpus = visible_gpus(env)
    env[WORKER_GPUS_ENV] = ",".join(gpus)
    return gpus


def pin_child(child_index: int, env: MutableMapping[str, str] | None = None) -> str:
    """In a child, right after fork: see one GPU (index modulo the GPU count, so with several
    children per GPU they are spread round robin) or none.

    Returns the device string the child trains on: ``cuda:0`` (its one visible GPU) or ``cpu``.
    A replacement child reuses the index of the one it replaces, so it keeps the same GPU.
    """
    env = os.environ if env is None else env
    gpus = visible_gpus(env)
    if not gpus:
        return "cpu"
    env["CUDA_VISIBLE_DEVICES"] = gpus[child_index % len(gpus)]
    return "cuda:0"


def child_device(configured: str, pinned: str) -> str:
    """The device a child uses: an explicit setting wins over the pinning, except ``auto``."""
    return pinned if configured == "auto" else configured
