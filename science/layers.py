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


# --- what training the spec's model costs, estimated from the spec (no torch) ---------------
# Both estimates are checked against the real model (saved tensors of one training step, a
# real checkpoint) in tests/core/test_cost_estimates.py; they are within 10% for depths 8-200.

IMAGE_SIZE = 32
FLOAT_BYTES = 4
# Tensors autograd keeps per pixel of each conv output: the conv's input, BN's input and
# normalised output, leaky ReLU's output (a fused conv + ReLU keeps less), measured.
SAVED_PER_CONV_OUTPUT = {True: 2.02, False: 1.14}
# The entry (its BN is always there), pooling and the head, in conv-output pixels per channel.
SAVED_FIXED_PIXELS = 1_280
# A checkpoint's per-tensor framing in torch.save's zip file, and per epoch of history: the
# metrics, and two windows x three statistics per layer (pickled floats).
CHECKPOINT_BYTES_PER_TENSOR = 320
CHECKPOINT_BYTES_PER_EPOCH = 256
CHECKPOINT_BYTES_PER_LAYER_EPOCH = 64
CHECKPOINT_FIXED_BYTES = 64 * 1024


def _conv_output_pixels(spec: ExperimentSpec) -> int:
    """Sum over the model's convolutions of output height x width (per channel, per image)."""
    total = IMAGE_SIZE * IMAGE_SIZE  # entry conv
    for stage in range(STAGES):
        side = IMAGE_SIZE >> stage
        total += 2 * spec.num_blocks * side * side  # processing blocks
        total += side * side + (side // 2) * (side // 2)  # reduce: conv1, pool, conv2
    return total


def activation_bytes(spec: ExperimentSpec) -> int:
    """Activation memory autograd keeps for one training step at the spec's batch size."""
    per_channel = SAVED_PER_CONV_OUTPUT[spec.batch_norm] * _conv_output_pixels(spec)
    per_image = spec.width * (per_channel + SAVED_FIXED_PIXELS) * FLOAT_BYTES
    return int(spec.hyperparameters.batch_size * per_image)


def _tensor_counts(spec: ExperimentSpec) -> tuple[int, int]:
    """(parameter tensors, model state tensors: parameters plus BatchNorm buffers)."""
    convs = 1 + STAGES * (2 * spec.num_blocks + 2)
    norms = 1 + (STAGES * (2 * spec.num_blocks + 2) if spec.batch_norm else 0)
    biases = 2 * STAGES + 1  # reduction convs and the head's linear
    parameters = convs + biases + 1 + 2 * norms  # + the linear's weight; BN gamma and beta
    return parameters, parameters + 3 * norms  # running mean, variance, batch count


def _optimizer_slots(spec: ExperimentSpec) -> int:
    hp = spec.hyperparameters
    if hp.optimizer == "adam":
        return 2  # first and second moments
    return 1 if hp.momentum > 0 else 0


def checkpoint_bytes(spec: ExperimentSpec) -> int:
    """Size of the run's last checkpoint: weights, best weights, optimiser state and the whole
    metric and gradient-flow history."""
    width = spec.width
    norms = 1 + (STAGES * (2 * spec.num_blocks + 2) if spec.batch_norm else 0)
    buffers = 2 * width * norms
    slots = _optimizer_slots(spec)
    weights = FLOAT_BYTES * (2 * (parameter_count(spec) + buffers) + slots * parameter_count(spec))
    parameter_tensors, state_tensors = _tensor_counts(spec)
    tensors = 2 * state_tensors + (slots + (1 if slots == 2 else 0)) * parameter_tensors
    epochs = spec.hyperparameters.epochs
    history = epochs * (
        CHECKPOINT_BYTES_PER_EPOCH + CHECKPOINT_BYTES_PER_LAYER_EPOCH * len(layer_names(spec))
    )
    return weights + CHECKPOINT_BYTES_PER_TENSOR * tensors + history + CHECKPOINT_FIXED_BYTES
