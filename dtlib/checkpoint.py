"""Saved torch files that are verified when read back (checkpoints, UAPs: a sha256 over their
content), a training run's checkpoint (how it is read back: moved aside when corrupt, refused when
it belongs to another config), and SIGTERM / SIGINT turned into "finish the batch, write a
checkpoint, then stop"."""
from __future__ import annotations

import errno
import hashlib
import os
import pickle
import signal
import threading
import time
import zipfile
from pathlib import Path
from typing import Any, Callable

import torch

from .config import Config
from .io import atomic_path

CHECKPOINT = "checkpoint.pt"


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


class CorruptFile(ValueError):
    """A saved file that cannot be trusted: unreadable, truncated, or failing its digest."""


def state_digest(obj: Any) -> str:
    """sha256 over a saved object's content: tensors by dtype, shape and bytes, containers in order
    (dict keys sorted), anything else by repr. torch.load does not check the zip's CRCs, so a
    flipped byte inside a tensor would otherwise load silently."""
    h = hashlib.sha256()

    def walk(o: Any) -> None:
        if torch.is_tensor(o):
            t = o.detach().to("cpu").contiguous().reshape(-1)
            h.update(f"T{t.dtype}{tuple(o.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes())
        elif isinstance(o, dict):
            h.update(f"D{len(o)}".encode())
            for k in sorted(o, key=repr):
                h.update(repr(k).encode())
                walk(o[k])
        elif isinstance(o, (list, tuple)):
            h.update(f"L{len(o)}".encode())
            for v in o:
                walk(v)
        else:
            h.update(repr(o).encode())

    walk(obj)
    return h.hexdigest()


def save_verified(path: str | os.PathLike, obj: dict[str, Any]) -> None:
    """``torch.save`` a dict with its ``state_digest`` under ``"sha256"``, atomically."""
    save_torch(path, {**obj, "sha256": state_digest(obj)})


# What torch.load raises on a damaged file (a truncated zip, a bad pickle, a short read); not
# OSError or MemoryError, which say nothing about the file, except the EINVAL of torch's zip reader
# on a file without its end record (a file cut short), when the file is not a whole zip.
_DAMAGED = (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, KeyError, IndexError,
            TypeError, AttributeError, UnicodeDecodeError)


def load_verified(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load what ``save_verified`` wrote, or raise CorruptFile (one sentence) if it is unreadable
    or its content does not match its digest. Files saved before digests existed (no ``rng``
    entry, no ``sha256``) load unchecked; a newer one without its digest is corrupt."""
    try:
        obj = torch.load(path, map_location=map_location, weights_only=False)
    except torch.OutOfMemoryError:
        raise
    except _DAMAGED as e:
        raise CorruptFile(f"{path} is unreadable ({type(e).__name__}: truncated or corrupt).") from None
    except OSError as e:
        if e.errno != errno.EINVAL or zipfile.is_zipfile(path):
            raise
        raise CorruptFile(f"{path} is unreadable (OSError: truncated or corrupt).") from None
    if not isinstance(obj, dict):
        raise CorruptFile(f"{path} does not hold a saved dict (it holds a {type(obj).__name__}).")
    want = obj.pop("sha256", None)
    if want is None and "rng" in obj:
        raise CorruptFile(f"{path} has lost its sha256 entry.")
    if want is not None and state_digest(obj) != want:
        raise CorruptFile(f"{path} fails its sha256 check (corrupt on disk).")
    return obj


class Stop:
    """SIGTERM and SIGINT, caught for the length of a training run: the loop finishes its batch,
    writes a checkpoint, then exits as the signal asked (SystemExit 143 for SIGTERM,
    KeyboardInterrupt for SIGINT). A second signal is not caught: it acts at once. Only the main
    thread can catch signals; elsewhere a no-op. Under DDP each rank stops at its own batch and
    rank 0's checkpoint is the one written (the others may fail in their next collective)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "Stop":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._catch)
        return self

    def _catch(self, signum: int, frame: Any) -> None:
        self.signum = signum
        for sig, handler in self._old.items():  # a second Ctrl-C interrupts right away
            signal.signal(sig, handler)

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)

    def exit(self) -> None:
        if self.signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + int(self.signum or 0))


class Writer:
    """Writes a run's checkpoints to ``path`` (None: a run without a directory, or a rank other
    than 0, writes nothing) and says when the next one within an epoch is due (every ``minutes``)."""

    def __init__(self, path: Path | None, minutes: float):
        self.path, self.every = path, 60.0 * minutes
        self.last = time.perf_counter()

    def due(self) -> bool:
        return time.perf_counter() - self.last > self.every

    def write(self, ckpt: dict[str, Any]) -> None:
        if self.path:
            save_verified(self.path, ckpt)
        self.last = time.perf_counter()


def read_checkpoint(path: Path, cfg: Config, log: Callable[[str], None]) -> dict[str, Any] | None:
    """The checkpoint at ``path`` (tensors on the CPU) to resume ``cfg`` from; None when there is
    none, or when it is corrupt (then reported in one line and moved aside to ``<name>.corrupt``,
    and the config is trained again from the start). A checkpoint of another training config is
    an error."""
    if not path.exists():
        return None
    try:
        ckpt = load_verified(path)
        if ckpt.get("batch") and not ckpt.get("partial"):
            raise CorruptFile(f"{path} stops inside an epoch but lacks that epoch's running sums.")
    except CorruptFile as e:
        path.replace(path.with_name(path.name + ".corrupt"))
        log(f"{str(e).rstrip('.')}; training this config again from the start (the bad file is kept as "
            f"{path.name}.corrupt).")
        return None
    written = Config.from_dict(ckpt["config"])
    was, asked = written.train_key(), cfg.train_key()
    if was != asked:
        diff = next(k for k in {**was, **asked} if was.get(k) != asked.get(k))
        raise ValueError(f"{path} was written for a different training config ({diff}={was.get(diff)!r}, "
                         f"asked {asked.get(diff)!r}); delete it or use another run directory.")
    return ckpt


def train_summary(ckpt: dict[str, Any]) -> dict[str, Any]:
    """What training cost and where it ran, from a checkpoint (or the same fields of a live run)."""
    h, wall = ckpt["history"], ckpt["wall_s"]
    images = sum(e["images_per_s"] * e["seconds"] for e in h)
    return {"wall_s": wall, "images_per_s": images / wall if wall else float("nan"), "steps": ckpt["step"],
            "final_loss": h[-1]["loss"], "final_train_acc": h[-1]["train_acc"], "precision": ckpt["precision"],
            "provenance": ckpt["provenance"], "history": h}
