"""The study's data as tensors of pixels in [0, 1]: CIFAR-10 with integrity checks, or an ImageFolder
(``data=imagenet``, ``imagenet``); the train/validation/test splits every run uses; subsets.

CIFAR-10 sources, in order: ``<data_dir>/cifar10.npz`` (arrays x_train, y_train, x_test, y_test; uint8 HWC),
a torchvision ``cifar-10-batches-py`` folder under ``data_dir``, or torchvision's download when asked.
The mini subset ``data/cifar10-mini.npz`` (made by ``scripts/make_mini.py``) is what the tests use.
Images are kept as uint8 NCHW (on the training device for CIFAR-sized data) and turned into floats
in [0, 1] per batch; normalisation is a layer of the model, so every epsilon is in pixel units.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets import CIFAR10

from .config import Config
from .imagenet import FolderSplit, load_imagenet, train_digest
from .images import (DataError, Loader, Split, augment, balanced_indices, check_images, crop_flip,  # noqa: F401
                     crop_flip_draws, rotate, to_float)
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


# Verified arrays by file (path, name, inode, size, mtime): a study reads the same npz for every run, and
# decompressing and hashing it again each time cost the smoke notebooks a tenth of their time. The
# arrays are read-only, so no caller can change what the next one gets; a file replaced or rewritten
# has another key and is read and checked again.
_VERIFIED: dict[tuple, dict[str, np.ndarray]] = {}


def _load_npz(path: Path, name: str) -> dict[str, np.ndarray]:
    st = path.stat()
    key = (str(path.resolve()), name, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _VERIFIED:
        arrays = _read_npz(path, name)
        for a in arrays.values():
            a.flags.writeable = False
        _VERIFIED[key] = arrays
    return dict(_VERIFIED[key])


def _read_npz(path: Path, name: str) -> dict[str, np.ndarray]:
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


def split_train(train: Split | FolderSplit, train_size: int = 0, val_size: int = 0,
                seed: int = 0) -> tuple[Split | FolderSplit, Split | FolderSplit]:
    """Hold ``val_size`` class-balanced training images out as a validation split, then keep a
    class-balanced ``train_size`` of the rest (0 = all of it). The split depends only on ``seed``
    (a data seed, fixed by the caller), not on the training seed, so all runs see the same images."""
    n_classes = train.classes
    for name, size in (("val_size", val_size), ("train_size", train_size)):
        if size % n_classes:
            raise DataError(f"{name}={size} must be a multiple of {n_classes} to stay class-balanced.")
    y = train.y.cpu().numpy()
    val_idx = balanced_indices(y, val_size // n_classes, seed, classes=n_classes) if val_size else np.zeros(0, dtype=np.int64)
    if train_size:
        train_idx = balanced_indices(y, train_size // n_classes, seed + 1, exclude=val_idx, classes=n_classes)
    else:
        train_idx = np.setdiff1d(np.arange(len(y)), val_idx)
    return train.subset(train_idx), train.subset(val_idx)


DATA_SEED = 0  # fixes which images form the subsets and the validation split, for every run


def load_data(cfg: Config) -> tuple[Split | FolderSplit, Split | FolderSplit, Split | FolderSplit]:
    """(train, validation, test) splits of ``cfg``'s data: CIFAR-10 as uint8 images on the CPU, an
    ImageFolder (``data=imagenet``; its test split is ``val/``) as files (``in_memory`` decodes them)."""
    if cfg.data == "imagenet":
        d = load_imagenet(data_path(cfg.data_dir), cfg.image_size, cfg.workers)
    else:
        d = load_cifar10(cfg.data, cfg.data_dir, cfg.download)
    train_split, val_split = split_train(d["train"], cfg.train_size, cfg.val_size, seed=DATA_SEED)
    return train_split, val_split, d["test"]


def data_identity(cfg: Config) -> str | None:
    """What the run cache's key needs to know of ``cfg``'s training images beyond its fields: for an
    ImageFolder, the digest of its train/ file names (another folder trains other weights); None for
    CIFAR-10, whose files are checked against their sha256 when loaded."""
    return train_digest(data_path(cfg.data_dir)) if cfg.data == "imagenet" else None


def fitting_pool(cfg: Config) -> Split | FolderSplit:
    """Every training image of ``cfg``'s data outside the validation split, whatever ``train_size``:
    what evaluation UAPs are fitted on (uint8, on the CPU). An attacker is not limited to the images
    a model was trained on, and a pool larger than the training subset lets a stronger check fit on
    more images than the suite it checks. It is ``load_data``'s training split at ``train_size=0``
    (the validation split does not depend on train_size), so one load gives it with val and test."""
    return load_data(cfg.replace(train_size=0))[0]


def in_memory(split: Split | FolderSplit) -> Split:
    """``split`` as images in memory: an ImageFolder's files decoded with the evaluation view."""
    return split.decode() if isinstance(split, FolderSplit) else split


def make_loader(split: Split | FolderSplit, batch_size: int, **kwargs) -> Loader:
    """The batch loader of ``split`` (``Loader``'s arguments): from memory, or streamed from files."""
    return split.loader(batch_size, **kwargs) if isinstance(split, FolderSplit) else Loader(split, batch_size, **kwargs)
