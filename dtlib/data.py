"""CIFAR-10 as tensors of pixels in [0, 1], with integrity checks, subsets and a DDP-ready batch loader.

Sources, in order: ``<data_dir>/cifar10.npz`` (arrays x_train, y_train, x_test, y_test; uint8 HWC),
a torchvision ``cifar-10-batches-py`` folder under ``data_dir``, or torchvision's download when asked.
The mini subset ``data/cifar10-mini.npz`` (made by ``scripts/make_mini.py``) is what the tests use.
Images are kept as uint8 NCHW (on the training device for CIFAR-sized data) and turned into floats
in [0, 1] per batch; normalisation is a layer of the model, so every epsilon is in pixel units.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torchvision.datasets import CIFAR10

from .config import Config
from .io import data_path

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
ARRAYS = ("x_train", "y_train", "x_test", "y_test")

# A file is accepted when its sha256 or the sha256 of its arrays (see content_digest) is listed here.
DIGESTS = {
    "full": {"file": "5f942d131da29010ed8ad665de260667a8a2fa9998574005e41681c791526eb1",
             "content": "2d78ab17690d01e037157fd6b09c457907c286104d0a9561601dab4ff81d9729"},
    "mini": {"file": "6a0481c099c8f0cea262f18dff900d6c9b57bc783c79c04ca62cc73cd2a304f7",
             "content": "3022d1d1e979a6ea64832ef983ea980a4ae4df3c53961a61bf7d064fe0f56e90"},
}
FILES = {"full": "cifar10.npz", "mini": "cifar10-mini.npz"}

WHERE = ("put the CIFAR-10 npz (arrays x_train, y_train, x_test, y_test; see data/README.md) at {npz}, "
         "a torchvision cifar-10-batches-py folder in {dir}, or run `make data DOWNLOAD=1`.")


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
    """Images (N, 3, 32, 32), uint8 or floats in [0, 1], and labels as int64 (N,) in 0..9."""
    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if self.x.dim() != 4 or self.x.shape[0] != self.y.shape[0] or self.y.dim() != 1:
            raise DataError(f"A Split needs images (N, 3, H, W) and labels (N,); got {tuple(self.x.shape)} and {tuple(self.y.shape)}.")
        check_images(self.x, "split's images")
        if self.y.dtype not in (torch.int64, torch.int32, torch.uint8, torch.int16):
            raise DataError(f"A Split's labels have dtype {self.y.dtype}; expected integers 0..9.")
        if self.y.numel() and not (0 <= int(self.y.min()) and int(self.y.max()) < len(CLASSES)):
            bad = int(self.y.min()) if int(self.y.min()) < 0 else int(self.y.max())
            raise DataError(f"A Split's labels hold {bad}, outside 0..9.")

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: torch.device | str) -> "Split":
        return Split(self.x.to(device), self.y.to(device))

    def subset(self, idx: torch.Tensor | np.ndarray) -> "Split":
        idx = torch.as_tensor(idx, dtype=torch.long, device=self.y.device)
        return Split(self.x[idx], self.y[idx])


def content_digest(arrays: dict[str, np.ndarray]) -> str:
    """sha256 over the names, shapes and bytes of the four arrays, in a fixed order."""
    h = hashlib.sha256()
    for k in ARRAYS:
        a = np.ascontiguousarray(arrays[k])
        h.update(k.encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def check_arrays(arrays: dict[str, np.ndarray], source: str) -> None:
    """Raise DataError naming the first array with a wrong shape, dtype or label range."""
    for k in ARRAYS:
        if k not in arrays:
            raise DataError(f"{source} has no array {k!r} (expected {', '.join(ARRAYS)}).")
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3):
            raise DataError(f"{source}: x_{split} has shape {x.shape} and dtype {x.dtype}; expected (N, 32, 32, 3) uint8.")
        if not np.issubdtype(y.dtype, np.integer) or y.shape != (x.shape[0],):
            raise DataError(f"{source}: y_{split} has shape {y.shape} and dtype {y.dtype}; expected ({x.shape[0]},) integers.")
        if y.size and (y.min() < 0 or y.max() >= len(CLASSES)):
            raise DataError(f"{source}: y_{split} holds label {int(y.min() if y.min() < 0 else y.max())}, outside 0..9.")


def _load_npz(path: Path, name: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in ARRAYS if k in z.files}
    except Exception as e:  # zip/npy errors come in many types; all mean the same thing here
        raise DataError(f"{path} is not a readable npz file ({type(e).__name__}); replace it with an intact copy.") from None
    check_arrays(arrays, str(path))
    want = DIGESTS[name]
    if want["content"] != content_digest(arrays) and want["file"] != file_digest(path):
        raise DataError(f"{path} fails its sha256 check (corrupt or a different dataset); replace it with an intact copy.")
    return arrays


def _load_torchvision(root: Path, download: bool) -> dict[str, np.ndarray]:
    try:
        tr = CIFAR10(str(root), train=True, download=download)
        te = CIFAR10(str(root), train=False, download=False)
    except RuntimeError:  # torchvision's own md5 check failed: "Dataset not found or corrupted"
        raise DataError(f"The torchvision CIFAR-10 folder in {root} is missing or corrupt (its md5 check failed); "
                        + WHERE.format(npz=root / FILES["full"], dir=root)) from None
    except OSError as e:  # a download with no network
        raise DataError(f"Downloading CIFAR-10 into {root} failed ({type(e).__name__}: {e}); "
                        + WHERE.format(npz=root / FILES["full"], dir=root)) from None
    arrays = {"x_train": tr.data, "y_train": np.asarray(tr.targets, dtype=np.int64),
              "x_test": te.data, "y_test": np.asarray(te.targets, dtype=np.int64)}
    check_arrays(arrays, str(root / "cifar-10-batches-py"))
    return arrays


def load_arrays(name: str = "full", data_dir: str | Path = "data", download: bool = False) -> dict[str, np.ndarray]:
    """The four CIFAR-10 arrays (uint8 HWC images, int64 labels) of ``name`` ('full' or 'mini')."""
    if name not in FILES:
        raise DataError(f"Unknown dataset {name!r}; choose 'full' or 'mini'.")
    root = data_path(data_dir)
    npz = root / FILES[name]
    if npz.exists():
        return _load_npz(npz, name)
    if name == "mini":
        raise DataError(f"{npz} is missing; it is committed with the project (regenerate it with "
                        f"scripts/make_mini.py from the full npz).")
    if (root / "cifar-10-batches-py").exists() or download:
        return _load_torchvision(root, download)
    raise DataError(f"CIFAR-10 was not found in {root}: " + WHERE.format(npz=npz, dir=root))


def load_cifar10(name: str = "full", data_dir: str | Path = "data", download: bool = False) -> dict[str, Split]:
    """``{"train": Split, "test": Split}`` with uint8 NCHW images."""
    a = load_arrays(name, data_dir, download)
    to = lambda x, y: Split(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))),
                            torch.from_numpy(y.astype(np.int64)))
    return {"train": to(a["x_train"], a["y_train"]), "test": to(a["x_test"], a["y_test"])}


def balanced_indices(labels: np.ndarray | torch.Tensor, per_class: int, seed: int = 0,
                     exclude: np.ndarray | None = None) -> np.ndarray:
    """``per_class`` indices of each class, drawn without replacement by a seeded permutation, sorted."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    if exclude is not None:
        order = order[~np.isin(order, exclude)]
    picked = []
    for c in range(len(CLASSES)):
        of_c = order[labels[order] == c]
        if len(of_c) < per_class:
            raise DataError(f"Asked for {per_class} images of class {c} but only {len(of_c)} are available.")
        picked.append(of_c[:per_class])
    return np.sort(np.concatenate(picked))


def split_train(train: Split, train_size: int = 0, val_size: int = 0, seed: int = 0) -> tuple[Split, Split]:
    """Hold ``val_size`` class-balanced training images out as a validation split, then keep a
    class-balanced ``train_size`` of the rest (0 = all of it). The split depends only on ``seed``
    (a data seed, fixed by the caller), not on the training seed, so all runs see the same images."""
    n_classes = len(CLASSES)
    for name, size in (("val_size", val_size), ("train_size", train_size)):
        if size % n_classes:
            raise DataError(f"{name}={size} must be a multiple of {n_classes} to stay class-balanced.")
    y = train.y.numpy()
    val_idx = balanced_indices(y, val_size // n_classes, seed) if val_size else np.zeros(0, dtype=np.int64)
    if train_size:
        train_idx = balanced_indices(y, train_size // n_classes, seed + 1, exclude=val_idx)
    else:
        train_idx = np.setdiff1d(np.arange(len(y)), val_idx)
    return train.subset(train_idx), train.subset(val_idx)


DATA_SEED = 0  # fixes which images form the subsets and the validation split, for every run


def load_data(cfg: Config) -> tuple[Split, Split, Split]:
    """(train, validation, test) splits of ``cfg``'s data, uint8 images on the CPU."""
    d = load_cifar10(cfg.data, cfg.data_dir, cfg.download)
    train_split, val_split = split_train(d["train"], cfg.train_size, cfg.val_size, seed=DATA_SEED)
    return train_split, val_split, d["test"]


def fitting_pool(cfg: Config) -> Split:
    """Every training image of ``cfg``'s data outside the validation split, whatever ``train_size``:
    what evaluation UAPs are fitted on (uint8, on the CPU). An attacker is not limited to the images
    a model was trained on, and a pool larger than the training subset lets a stronger check fit on
    more images than the suite it checks. It is ``load_data``'s training split at ``train_size=0``
    (the validation split does not depend on train_size), so one load gives it with val and test."""
    return load_data(cfg.replace(train_size=0))[0]


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
        device = self.split.y.device
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
