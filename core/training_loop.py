"""Train one run (one seed of one experiment) the seed study's way, resumable bit for bit.

A run alone is a pack of one: ``fit`` hands it to ``pack.fit_pack``, the one training loop
(see its module docstring for what an epoch does and how a run ends).
"""

from __future__ import annotations

import threading

from gradlab.core.data import CifarArrays
from gradlab.core.pack import PackRun, fit_pack
from gradlab.science.records import EpochCallback, TrainingResult
from gradlab.science.spec import ExperimentSpec


def fit(
    spec: ExperimentSpec,
    seed: int,
    data: CifarArrays,
    *,
    device: str = "cpu",
    on_epoch_end: EpochCallback | None = None,
    resume_from: bytes | None = None,
    show_progress: bool = False,
    compile_model: bool = False,
    abandon: threading.Event | None = None,
) -> TrainingResult:
    """Train ``spec`` with ``seed`` on ``data`` alone; see CONTRACTS.md.

    ``compile_model`` compiles the training forward on CUDA (``torch.compile`` with CUDA
    graphs, as a pack does; ignored on the CPU). ``abandon``: see ``pack``.
    """
    run = PackRun(spec, seed, on_epoch_end, resume_from)
    return fit_pack([run], data, device=device, show_progress=show_progress,
                    cuda_graphs=compile_model, abandon=abandon)[0]
