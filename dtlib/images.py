"""Images as tensors of pixels in [0, 1] whatever their source: the ``Split`` of images and labels,
the integrity check of pixel values, class-balanced draws, the batched augmentations and the
DDP-ready batch ``Loader`` of a split held in memory. ``data`` (CIFAR-10) and ``imagenet`` (an
ImageFolder, streamed from files) build on it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

CIFAR_CLASSES = 10


class DataError(ValueError):
    """Missing, corrupt or malformed data; the message says what is wrong and where the data goes."""


def check_images(x: torch.Tensor, what: str = "images") -> None:
    """Raise DataError (one sentence) unless ``x`` is uint8, or floats that are finite and in [0, 1]."""
    if x.dtype == torch.uint8:
        return
    if not x.is_floating_point():
        raise DataError(f"The {what} have dtype {x.dtype}; expected uint8 or floats in [0, 1].")
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise DataError(f"The {what} hold {bad} NaN or Inf values; pixels must be finite numbers in [0, 1].")
    if not x.numel():
        return
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 1:
        raise DataError(f"The {what} range over [{lo:.4g}, {hi:.4g}]; pixels must lie in [0, 1] (uint8 images / 255).")


@dataclass
class Split:
    """Images (N, 3, H, W), uint8 or floats in [0, 1], and labels as int64 (N,) in 0..classes-1."""
    x: torch.Tensor
    y: torch.Tensor
    classes: int = CIFAR_CLASSES

    def __post_init__(self) -> None:
        if self.x.dim() != 4 or self.x.shape[0] != self.y.shape[0] or self.y.dim() != 1:
            raise DataError(f"A Split needs images (N, 3, H, W) and labels (N,); got {tuple(self.x.shape)} and {tuple(self.y.shape)}.")
        check_images(self.x, "split's images")
        top = self.classes - 1
        if self.y.dtype not in (torch.int64, torch.int32, torch.uint8, torch.int16):
            raise DataError(f"A Split's labels have dtype {self.y.dtype}; expected integers 0..{top}.")
        if self.y.numel() and not (0 <= int(self.y.min()) and int(self.y.max()) <= top):
            bad = int(self.y.min()) if int(self.y.min()) < 0 else int(self.y.max())
            raise DataError(f"A Split's labels hold {bad}, outside 0..{top}.")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def device(self) -> torch.device:
        return self.x.device

    def to(self, device: torch.device | str) -> "Split":
        return Split(self.x.to(device), self.y.to(device), self.classes)

    def subset(self, idx: torch.Tensor | np.ndarray) -> "Split":
        idx = torch.as_tensor(idx, dtype=torch.long, device=self.y.device)
        return Split(self.x[idx], self.y[idx], self.classes)


def balanced_indices(labels: np.ndarray | torch.Tensor, per_class: int, seed: int = 0,
                     exclude: np.ndarray | None = None, classes: int = CIFAR_CLASSES) -> np.ndarray:
    """``per_class`` indices of each of ``classes`` classes, drawn without replacement by a seeded permutation, sorted."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    if exclude is not None:
        order = order[~np.isin(order, exclude)]
    # each class's images in the permutation's order, all classes in one stable sort (not a pass over
    # the labels per class: ImageNet has 1,000 classes and 1.28 M images)
    grouped = order[np.argsort(labels[order], kind="stable")]
    starts = np.searchsorted(labels[grouped], np.arange(classes + 1))
    picked = []
    for c in range(classes):
        of_c = grouped[starts[c]:starts[c + 1]]
        if len(of_c) < per_class:
            raise DataError(f"Asked for {per_class} images of class {c} but only {len(of_c)} are available.")
        picked.append(of_c[:per_class])
    return np.sort(np.concatenate(picked))


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1]."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x


def crop_flip_draws(n: int, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random offsets (rows, cols) in [0, 2 * pad] and flip flags (0/1) of ``n`` images, as one
    (3, n) int64 tensor drawn from ``generator`` (CPU), so a seed fixes them on every device."""
    di = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dj = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    return torch.stack([di, dj, flip.long()])


def crop_flip(x: torch.Tensor, draws: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Crop each image from its ``pad``-zero-padded copy at the drawn offsets and flip it
    horizontally where drawn; ``draws`` (3, B) from ``crop_flip_draws``, on the images' device."""
    n, c, h, w = x.shape
    di, dj, flip = draws[0], draws[1], draws[2].bool()
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    rows = (di[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dj[:, None] + torch.arange(w, device=x.device))
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, None, :]
    return padded[torch.arange(n, device=x.device)[:, None, None, None], torch.arange(c, device=x.device)[None, :, None, None], rows, cols]


def augment(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with ``pad`` zero padding and random horizontal flip, per image, batched."""
    return crop_flip(x, crop_flip_draws(len(x), generator, pad).to(x.device), pad)


def rotate(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate each image (B, C, H, W) about its centre by its angle in ``degrees`` (B,),
    counter-clockwise, nearest-pixel, zeros outside: torchvision's ``RandomRotation`` defaults."""
    t = torch.deg2rad(degrees.float())
    cos, sin, zero = torch.cos(t), torch.sin(t), torch.zeros_like(t)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = torch.nn.functional.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


class Loader:
    """Shuffled minibatches of (float images in [0, 1], labels) from a Split already on its device.

    Order and sharding are those of ``torch.utils.data.DistributedSampler(shuffle=True, seed=seed)``
    (same indices, tested): each epoch one permutation from ``seed + epoch``, padded to a multiple of
    ``world_size``, rank r taking items r, r+W, ...; call ``set_epoch`` before each epoch as with
    that sampler. Augmentation draws come from a generator seeded by (seed, epoch, rank); with
    ``rotation`` (degrees) each training image is also rotated by an angle drawn in [-rotation, rotation]."""

    def __init__(self, split: Split, batch_size: int, *, train: bool = True, seed: int = 0,
                 rank: int = 0, world_size: int = 1, drop_last: bool | None = None, rotation: float = 0.0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is out of range for world_size {world_size}.")
        self.split, self.batch_size, self.train, self.seed = split, batch_size, train, seed
        self.rank, self.world_size, self.rotation = rank, world_size, rotation
        self.drop_last = train if drop_last is None else drop_last
        self.epoch = 0
        per_rank = math.ceil(len(split) / world_size)
        self.num_samples = per_rank
        n_batches = per_rank // batch_size if self.drop_last else math.ceil(per_rank / batch_size)
        if n_batches == 0:
            raise DataError(f"The split has {len(split)} images, fewer than one batch of {batch_size}; lower batch_size.")
        self.n_batches = n_batches

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n_batches

    def indices(self) -> torch.Tensor:
        n = len(self.split)
        if self.train:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        total = self.num_samples * self.world_size
        if total > n:  # as DistributedSampler: repeat the head so every rank gets as many items
            order = torch.cat([order, order[: total - n]])
        return order[self.rank:total:self.world_size]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.batches()

    def batches(self, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The epoch's batches from batch ``start`` on: exactly those an iteration from the first
        batch would yield after ``start`` batches (how a run resumes mid-epoch)."""
        if not 0 <= start <= self.n_batches:
            raise ValueError(f"start batch {start} is out of range for an epoch of {self.n_batches} batches.")
        device = self.split.device
        idx = self.indices().to(device)
        g = torch.Generator().manual_seed((self.seed << 32) + (self.epoch << 12) + self.rank + 0xA06)
        sizes = [len(idx[b * self.batch_size:(b + 1) * self.batch_size]) for b in range(self.n_batches)]
        # the epoch's augmentation draws, batch after batch as augment() would take them, moved to
        # the device at once: no host-to-device copy (and so no stream sync) inside the loop
        draws = torch.cat([crop_flip_draws(n, g) for n in sizes], 1).to(device) if self.train else None
        turns = (torch.rand(sum(sizes), generator=g) * 2 - 1).mul_(self.rotation).to(device) \
            if self.train and self.rotation else None
        for b in range(start, self.n_batches):
            lo, hi = b * self.batch_size, b * self.batch_size + sizes[b]
            x = to_float(self.split.x[idx[lo:hi]])
            if self.train:
                x = crop_flip(x, draws[:, lo:hi])
            if turns is not None:
                x = rotate(x, turns[lo:hi])
            yield x, self.split.y[idx[lo:hi]]
