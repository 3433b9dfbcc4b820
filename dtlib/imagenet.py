"""ImageNet, or any folder of class folders in torchvision's ImageFolder layout, as the study's data
(``data=imagenet``).

``data_dir`` holds ``train/`` and ``val/``, each with one folder of images per class and the same
class names in both (``val/`` sorted into class folders, as torchvision's ImageNet preparation
leaves it); the class count is the number of folders. Loading decodes nothing: a ``FolderSplit``
lists files and labels. Training streams it through a torch DataLoader with worker processes and
pinned memory (``StreamLoader``): each image is cut by RandomResizedCrop to ``image_size`` pixels
square and flipped at random, with draws seeded by (seed, epoch, image), so a resumed epoch sees the
same pixels on any number of workers or processes. The images UAPs are fitted on and scored on are
decoded once, with the evaluation transform (shorter side resized to 256/224 of ``image_size``, then
the centre crop), into uint8 ``Split``s. Pixels are in [0, 1]; normalisation (ImageNet's mean and
std) is the model's first layer, so every epsilon stays in pixel units.
"""
from __future__ import annotations

import hashlib
import math
import os
from functools import lru_cache
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as TF

from .images import DataError, Loader, Split, rotate, to_float

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
NATIVE_SIZE = 224  # the side of the crops when image_size is 0
EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SCALE, RATIO = (0.08, 1.0), (3 / 4, 4 / 3)  # RandomResizedCrop's defaults: area fraction and aspect ratio
LAYOUT = ("data=imagenet reads data_dir/train and data_dir/val, each holding one folder of images per class "
          "(torchvision's ImageFolder layout)")
DECODE_BATCH = 64


def scan(folder: Path, classes: list[str] | None = None) -> tuple[list[str], list[str], torch.Tensor]:
    """(class names, image paths, labels) of an ImageFolder, in sorted order; ``classes``: the names
    ``folder`` must hold (val/ against train/). Raises DataError (one sentence) for a missing folder,
    one without class folders, a class folder without images or classes that differ. A folder is
    walked once per process (``_walk``): files added while a process runs are not seen by it."""
    names, paths, labels, _ = _walk(str(Path(folder).resolve()))
    if classes is not None and list(names) != classes:
        odd = sorted(set(names) ^ set(classes)) or list(names)
        raise DataError(f"The class folders of {folder} differ from those of train/ (such as {odd[0]!r}); both must hold the same classes.")
    return list(names), list(paths), torch.tensor(labels, dtype=torch.int64)


@lru_cache(maxsize=8)
def _walk(where: str) -> tuple[tuple[str, ...], tuple[str, ...], tuple[int, ...], tuple[int, ...]]:
    """(class names, image paths, labels, file sizes in bytes) of the ImageFolder at ``where``."""
    folder = Path(where)
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder; {LAYOUT}.")
    names = sorted(e.name for e in os.scandir(folder) if e.is_dir())
    if not names:
        raise DataError(f"{folder} holds no class folders; {LAYOUT}.")
    paths, labels, sizes = [], [], []
    for c, name in enumerate(names):
        found = sorted(str(Path(top) / f) for top, _, files in os.walk(folder / name, followlinks=True)
                       for f in files if f.lower().endswith(EXTENSIONS))
        if not found:
            raise DataError(f"The class folder {folder / name} holds no images ({', '.join(EXTENSIONS)}); every class needs one or more.")
        paths += found
        labels += [c] * len(found)
        sizes += [os.stat(p).st_size for p in found]
    return tuple(names), tuple(paths), tuple(labels), tuple(sizes)


def train_digest(root: Path) -> str:
    """sha256 of ``root``'s training images' classes, paths under train/ and sizes in bytes: what
    identifies an ImageFolder's training data in the run cache's key (its contents are not read)."""
    train = (root / "train").resolve()
    scan(train)  # its errors, in one sentence
    _, paths, labels, sizes = _walk(str(train))
    lines = (f"{c}\t{Path(p).relative_to(train).as_posix()}\t{n}\n" for p, c, n in zip(paths, labels, sizes))
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def read_image(path: str) -> torch.Tensor:
    """The image at ``path`` as uint8 (3, H, W) RGB (grey, palette and CMYK files converted), read by
    Pillow as torchvision's ImageFolder reads it."""
    try:
        with Image.open(path) as img:
            rgb = np.asarray(img.convert("RGB"))
        return torch.from_numpy(rgb.copy()).permute(2, 0, 1)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:  # UnidentifiedImageError is an OSError
        raise DataError(f"{path} is not a readable image ({type(e).__name__}); replace or remove it.") from None


def item_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The generator of one image's augmentation in one epoch: the same draws wherever it is decoded."""
    digest = hashlib.blake2b(f"{seed},{epoch},{index}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)


def crop_box(h: int, w: int, g: torch.Generator) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a RandomResizedCrop box in an h x w image (torchvision's
    algorithm: ten tries at a random area fraction and log-uniform aspect ratio, then the centre
    crop at the nearest allowed ratio), drawn from ``g``."""
    lo, hi = math.log(RATIO[0]), math.log(RATIO[1])
    for _ in range(10):
        u = torch.rand(2, generator=g).tolist()
        area = h * w * (SCALE[0] + u[0] * (SCALE[1] - SCALE[0]))
        aspect = math.exp(lo + u[1] * (hi - lo))
        cw, ch = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(torch.randint(0, h - ch + 1, (1,), generator=g))
            left = int(torch.randint(0, w - cw + 1, (1,), generator=g))
            return top, left, ch, cw
    if w / h < RATIO[0]:
        cw, ch = w, round(w / RATIO[0])
    elif w / h > RATIO[1]:
        cw, ch = round(h * RATIO[1]), h
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def train_view(img: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
    """RandomResizedCrop to ``size`` x ``size`` and a random horizontal flip, uint8 in and out."""
    top, left, h, w = crop_box(img.shape[-2], img.shape[-1], g)
    out = TF.resized_crop(img, top, left, h, w, [size, size], antialias=True)
    return TF.horizontal_flip(out) if float(torch.rand(1, generator=g)) < 0.5 else out


def eval_view(img: torch.Tensor, size: int) -> torch.Tensor:
    """The shorter side resized to ``size`` * 256/224 (256 for 224), then the centre ``size`` x ``size`` crop."""
    return TF.center_crop(TF.resize(img, [round(size * 256 / 224)], antialias=True), [size, size])


class _Items(Dataset):
    """(uint8 image, label) by index into a split's files: the training view of epoch ``epoch``
    (``train``) or the evaluation view."""

    def __init__(self, split: "FolderSplit", train: bool, seed: int = 0, epoch: int = 0):
        # one bytes array, not a list of str: forked workers reading a list would touch (and so copy)
        # every page of its 1.28 M objects' reference counts
        self.paths, self.y, self.size = np.array([p.encode() for p in split.paths]), split.y, split.size
        self.train, self.seed, self.epoch = train, seed, epoch

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = read_image(self.paths[i].decode())
        view = train_view(img, self.size, item_generator(self.seed, self.epoch, i)) if self.train else eval_view(img, self.size)
        return view.contiguous(), self.y[i]


def _one_sentence(e: DataError) -> DataError:
    """A DataError raised in a DataLoader worker comes back with the worker's traceback; keep its sentence."""
    return DataError(str(e).strip().splitlines()[-1].split("DataError: ", 1)[-1])


@dataclass
class FolderSplit:
    """Image files and their labels (int64 (N,), on the CPU), decoded on demand: ``image_size``
    pixels square, by ``workers`` DataLoader processes (0 = in this one), onto ``device``; ``root``
    is the folder of its class folders (train/ or val/)."""
    paths: list[str]
    y: torch.Tensor
    classes: int
    size: int
    workers: int = 0
    root: str = ""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def __len__(self) -> int:
        return len(self.paths)

    def to(self, device: torch.device | str) -> "FolderSplit":
        return replace(self, device=torch.device(device))

    def subset(self, idx: torch.Tensor | np.ndarray) -> "FolderSplit":
        idx = torch.as_tensor(idx, dtype=torch.long).cpu()
        return replace(self, paths=[self.paths[i] for i in idx.tolist()], y=self.y[idx])

    def listing(self) -> str:
        """sha256 of the split's files in order, as ``label<TAB>path under root`` lines: which images
        (the same on any machine holding the same folder), recorded with an evaluation."""
        lines = (f"{int(c)}\t{Path(p).relative_to(self.root).as_posix() if self.root else p}\n"
                 for p, c in zip(self.paths, self.y))
        return hashlib.sha256("".join(lines).encode()).hexdigest()

    def loader(self, batch_size: int, **kwargs) -> "StreamLoader":
        return StreamLoader(self, batch_size, **kwargs)

    def decode(self) -> Split:
        """Every image with the evaluation view, as a uint8 Split on ``device``."""
        items = DataLoader(_Items(self, train=False), batch_size=DECODE_BATCH, num_workers=self.workers)
        xs, ys = [], []
        try:
            for x, y in items:
                xs.append(x)
                ys.append(y)
        except DataError as e:
            raise _one_sentence(e) from None
        x = torch.cat(xs) if xs else torch.zeros(0, 3, self.size, self.size, dtype=torch.uint8)
        y = torch.cat(ys) if ys else torch.zeros(0, dtype=torch.int64)
        return Split(x.to(self.device), y.to(self.device), self.classes)


class StreamLoader(Loader):
    """``Loader``'s batches (same order, sharding, ``set_epoch`` and ``batches(start)``) of a
    FolderSplit, decoded by its DataLoader workers with the training view and pinned on CUDA; the
    crop and flip of an image depend on (seed, epoch, image) only. ``rotation`` as in ``Loader``."""

    def batches(self, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if not 0 <= start <= self.n_batches:
            raise ValueError(f"start batch {start} is out of range for an epoch of {self.n_batches} batches.")
        split, bs = self.split, self.batch_size
        idx = self.indices()
        end = min(len(idx), self.n_batches * bs)
        g = torch.Generator().manual_seed((self.seed << 32) + (self.epoch << 12) + self.rank + 0xA06)
        turns = (torch.rand(end, generator=g) * 2 - 1).mul_(self.rotation) if self.train and self.rotation else None
        items = DataLoader(_Items(split, self.train, self.seed, self.epoch), batch_size=bs,
                           sampler=idx[start * bs:end].tolist(), num_workers=split.workers,
                           pin_memory=split.device.type == "cuda")
        try:
            for b, (x, y) in enumerate(items, start):
                x = to_float(x.to(split.device, non_blocking=True))
                if turns is not None:
                    x = rotate(x, turns[b * bs:b * bs + len(y)].to(split.device))
                yield x, y.to(split.device, non_blocking=True)
        except DataError as e:
            raise _one_sentence(e) from None


def load_imagenet(root: Path, image_size: int = 0, workers: int = 0) -> dict[str, FolderSplit]:
    """``{"train": FolderSplit, "test": FolderSplit}`` of the ImageFolder at ``root`` (its ``train/``
    and ``val/``); ``image_size`` 0 = 224."""
    classes, paths, y = scan(root / "train")
    _, val_paths, val_y = scan(root / "val", classes)
    size = image_size or NATIVE_SIZE
    return {"train": FolderSplit(paths, y, len(classes), size, workers, root=str((root / "train").resolve())),
            "test": FolderSplit(val_paths, val_y, len(classes), size, workers, root=str((root / "val").resolve()))}
