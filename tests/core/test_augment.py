"""Whole-batch augmentation: crops are shifted windows of the zero-padded image, flips mirror."""

from __future__ import annotations

import numpy as np
import torch

from gradlab.core.augment import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    EvalBatches,
    Normaliser,
    TrainBatches,
    draw_epoch,
)

CPU = torch.device("cpu")


def _images(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return (rng.integers(1, 256, (n, 32, 32, 3), dtype=np.uint8),  # 1..255: padding is the only 0
            np.arange(n, dtype=np.int64))


def _denormalise(x: torch.Tensor) -> np.ndarray:
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    return (x * std + mean).mul(255).round().permute(0, 2, 3, 1).numpy().astype(np.int64)


def _reference_crop(image: np.ndarray, dy: int, dx: int, flip: bool) -> np.ndarray:
    padded = np.pad(image, ((4, 4), (4, 4), (0, 0))).astype(np.int64)
    crop = padded[dy : dy + 32, dx : dx + 32]
    return crop[:, ::-1] if flip else crop


def test_each_batch_image_is_its_own_crop_and_flip_of_the_padded_original() -> None:
    images, labels = _images(50)
    generator = torch.Generator().manual_seed(7)
    batches = TrainBatches(images, labels, batch_size=16, device=CPU, augment=True,
                           generator=generator)
    replay = torch.Generator().manual_seed(7)
    draw = draw_epoch(50, replay, augment=True)
    seen = []
    for position, (x, y) in enumerate(batches.epoch()):
        assert x.shape[1:] == (3, 32, 32) and x.dtype == torch.float32
        assert x.is_contiguous(memory_format=torch.channels_last)
        pixels = _denormalise(x)
        for k, label in enumerate(y.tolist()):
            i = position * 16 + k
            assert label == int(draw.order[i])
            expected = _reference_crop(images[label], int(draw.dy[i]), int(draw.dx[i]),
                                       bool(draw.flip[i]))
            assert np.array_equal(pixels[k], expected)
            seen.append(label)
    assert sorted(seen) == list(range(50))  # every image once per epoch, last batch short


def test_augmentation_uses_all_offsets_and_flips_about_half() -> None:
    draw = draw_epoch(20_000, torch.Generator().manual_seed(0), augment=True)
    assert set(draw.dy.tolist()) == set(range(9)) == set(draw.dx.tolist())
    assert 0.47 < draw.flip.float().mean().item() < 0.53


def test_same_generator_state_gives_the_same_epoch_and_epochs_differ() -> None:
    images, labels = _images(30)
    a = TrainBatches(images, labels, batch_size=10, device=CPU, augment=True,
                     generator=torch.Generator().manual_seed(3))
    b = TrainBatches(images, labels, batch_size=10, device=CPU, augment=True,
                     generator=torch.Generator().manual_seed(3))
    first_a = [x for x, _ in a.epoch()]
    first_b = [x for x, _ in b.epoch()]
    assert all(torch.equal(p, q) for p, q in zip(first_a, first_b, strict=True))
    second_a = [x for x, _ in a.epoch()]
    assert not all(torch.equal(p, q) for p, q in zip(first_a, second_a, strict=True))


def test_without_augmentation_batches_are_the_images_normalised() -> None:
    images, labels = _images(8)
    batches = TrainBatches(images, labels, batch_size=8, device=CPU, augment=False,
                           generator=torch.Generator().manual_seed(0))
    x, y = next(batches.epoch())
    assert np.array_equal(_denormalise(x), images[y.numpy()].astype(np.int64))


def test_normalisation_is_the_seed_frameworks_cifar10_statistics() -> None:
    pixel = torch.full((1, 1, 1, 3), 255, dtype=torch.uint8)
    out = Normaliser(CPU)(pixel).flatten()
    expected = [(1 - m) / s for m, s in zip(CIFAR10_MEAN, CIFAR10_STD, strict=True)]
    assert torch.allclose(out, torch.tensor(expected), atol=1e-5)


def test_eval_batches_keep_order_and_cover_everything() -> None:
    images, labels = _images(25)
    batches = EvalBatches(images, labels, batch_size=10, device=CPU)
    assert len(batches) == 3
    got = torch.cat([y for _, y in batches])
    assert torch.equal(got, torch.arange(25))
