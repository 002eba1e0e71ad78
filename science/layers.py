"""The model's layers and size from the spec alone, without PyTorch.

The API, the store and the reports need the gradient-flow layer names (depth order) and the
parameter count of a spec's model, but must not import torch. This module computes both
arithmetically from the architecture in ``gradlab.core.architectures``; a test checks them
against the built model for every valid depth from 8 to 98, with and without BN and residual.
"""

from __future__ import annotations

from gradlab.science.spec import STAGES, ExperimentSpec

KERNEL_AREA = 3 * 3
IN_CHANNELS = 3


def _block_layers(prefix: str, batch_norm: bool) -> list[str]:
    # conv1 -> [bn1] -> conv2 -> [bn2], in registration (= depth) order.
    names = [f"{prefix}.conv1"]
    if batch_norm:
        names.append(f"{prefix}.bn1")
    names.append(f"{prefix}.conv2")
    if batch_norm:
        names.append(f"{prefix}.bn2")
    return names


def layer_names(spec: ExperimentSpec) -> list[str]:
    """Gradient-flow layer names in depth order (weights only, BN gamma included)."""
    names = ["entry.conv", "entry.bn"]
    for stage in range(STAGES):
        for block in range(spec.num_blocks):
            names += _block_layers(f"stage{stage}.block{block}", spec.batch_norm)
        names += _block_layers(f"stage{stage}.reduce", spec.batch_norm)
    names.append("head.linear")
    return names


def parameter_count(spec: ExperimentSpec) -> int:
    """Trainable scalars of the spec's model (residual skips carry no parameters)."""
    width = spec.width
    conv = width * width * KERNEL_AREA
    batch_norm = 2 * width if spec.batch_norm else 0  # gamma and beta
    entry = IN_CHANNELS * width * KERNEL_AREA + 2 * width  # bias-free conv, its BN always
    processing = 2 * (conv + batch_norm)  # bias-free convs
    reduction = 2 * (conv + width + batch_norm)  # convs with bias
    head = width * spec.num_classes + spec.num_classes
    return entry + STAGES * (spec.num_blocks * processing + reduction) + head
