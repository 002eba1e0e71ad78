"""Batches on the training device: whole-batch augmentation and normalisation with tensor ops.

The uint8 images live on the device, zero-padded by 4 pixels, next to a mirrored copy: a
flipped crop of an image is a plain crop of its mirror (at column offset 2*PAD - dx). So one
gather of 32 contiguous pixel rows per image does shuffling, the random 32x32 crop and the
horizontal flip together (no per-image Python or PIL work, no per-pixel index arithmetic).
All randomness for an epoch (order, crop offsets, flips) is drawn up front from one seeded
CPU generator, so the epoch is reproducible from the generator's state alone and costs one
host-to-device copy.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

# The seed framework normalises CIFAR-100 with CIFAR-10's statistics; we keep its choice.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
PAD = 4
SIZE = 32


class Normaliser:
    """uint8 NHWC batch -> float32 NCHW (channels_last memory), ``(x/255 - mean) / std``."""

    def __init__(self, device: torch.device) -> None:
        std = torch.tensor(CIFAR10_STD, dtype=torch.float32)
        mean = torch.tensor(CIFAR10_MEAN, dtype=torch.float32)
        self.scale = (1.0 / (255.0 * std)).view(1, 3, 1, 1).to(device)
        self.shift = (-mean / std).view(1, 3, 1, 1).to(device)

    def __call__(self, images_nhwc: torch.Tensor) -> torch.Tensor:
        # permute() of an NHWC tensor is an NCHW view with channels_last strides; the
        # element-wise ops below keep that layout, which is what the convolutions want.
        x = images_nhwc.permute(0, 3, 1, 2).to(torch.float32)
        return torch.addcmul(self.shift, x, self.scale)


@dataclass(frozen=True)
class EpochDraw:
    """One epoch's randomness: order, crop offsets (0..2*PAD) and flips, per position."""

    order: torch.Tensor
    dy: torch.Tensor
    dx: torch.Tensor
    flip: torch.Tensor


def draw_epoch(num_images: int, generator: torch.Generator, augment: bool) -> EpochDraw:
    order = torch.randperm(num_images, generator=generator)
    if augment:
        dy = torch.randint(0, 2 * PAD + 1, (num_images,), generator=generator)
        dx = torch.randint(0, 2 * PAD + 1, (num_images,), generator=generator)
        flip = torch.rand(num_images, generator=generator) < 0.5
    else:
        dy = dx = torch.full((num_images,), PAD, dtype=torch.int64)
        flip = torch.zeros(num_images, dtype=torch.bool)
    return EpochDraw(order, dy, dx, flip)


def pad_images(images_nhwc: torch.Tensor) -> torch.Tensor:
    """Zero-pad H and W by PAD (black pixels, as torchvision's RandomCrop(padding=4))."""
    return F.pad(images_nhwc, (0, 0, PAD, PAD, PAD, PAD))


class TrainBatches:
    """Shuffled, augmented, normalised training batches on ``device``; last batch may be short."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, *, batch_size: int,
                 device: torch.device, augment: bool, generator: torch.Generator) -> None:
        padded = pad_images(torch.from_numpy(images))
        self.num_images = padded.shape[0]
        side = SIZE + 2 * PAD
        sources = torch.cat([padded, padded.flip(2)]).to(device)  # [2N, 40, 40, 3]
        # Row windows: windows[s, y, x] is the 32-pixel run of row y of source s from column x.
        self.windows = sources.view(2 * self.num_images, side, side * 3).unfold(2, SIZE * 3, 3)
        self.labels = torch.from_numpy(labels).to(device)
        self.batch_size = batch_size
        self.device = device
        self.augment = augment
        self.generator = generator
        self.normalise = Normaliser(device)
        self._rows = torch.arange(SIZE, device=device)

    def __len__(self) -> int:
        return -(-self.num_images // self.batch_size)

    def with_generator(self, generator: torch.Generator) -> TrainBatches:
        """The same images on the device, drawn by another generator (another run of a pack:
        its own order and augmentation without another copy of the data)."""
        other = copy.copy(self)
        other.generator = generator
        return other

    def epoch(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        draw = draw_epoch(self.num_images, self.generator, self.augment)
        source = draw.order + self.num_images * draw.flip  # the mirror when flipped
        column = torch.where(draw.flip, 2 * PAD - draw.dx, draw.dx)
        plan = torch.stack([draw.order, source, draw.dy, column]).to(self.device)
        for start in range(0, self.num_images, self.batch_size):
            order, src, dy, dx = plan[:, start : start + self.batch_size]
            rows = self.windows[src[:, None], dy[:, None] + self._rows, dx[:, None]]
            yield self.normalise(rows.view(-1, SIZE, SIZE, 3)), self.labels[order]


class EvalBatches:
    """Un-augmented batches in stored order (validation, test)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, *, batch_size: int,
                 device: torch.device) -> None:
        self.images = torch.from_numpy(images).to(device)
        self.labels = torch.from_numpy(labels).to(device)
        self.batch_size = batch_size
        self.normalise = Normaliser(device)

    def __len__(self) -> int:
        return -(-self.labels.shape[0] // self.batch_size)

    @property
    def num_images(self) -> int:
        return int(self.labels.shape[0])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, self.num_images, self.batch_size):
            end = start + self.batch_size
            yield self.normalise(self.images[start:end]), self.labels[start:end]
