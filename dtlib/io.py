"""Atomic file writes and provenance: nothing half-written is ever left where a later run would trust it."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import zipfile
import platform
import re
import subprocess
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import torch

REPO = Path(__file__).resolve().parent.parent
_UMASK = os.umask(0)
os.umask(_UMASK)


def project_dir() -> Path:
    """The project folder: the first of the working directory and its parents holding dtlib/ and
    pyproject.toml (notebooks run in notebooks/), else the folder above the installed package."""
    for d in (Path.cwd(), *Path.cwd().parents):
        if (d / "dtlib").is_dir() and (d / "pyproject.toml").exists():
            return d
    return REPO


def data_path(data_dir: str | os.PathLike) -> Path:
    """Where ``data_dir`` points: an absolute path as it is, a relative one read from the project
    folder, so configs and results keep the path as the user gave it, never this machine's."""
    p = Path(data_dir).expanduser()
    return p if p.is_absolute() else project_dir() / p


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        with open(tmp, "rb") as fh:  # on disk before the rename, so a power cut cannot leave it empty
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


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
# OSError or MemoryError, which say nothing about the file.
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
    if not isinstance(obj, dict):
        raise CorruptFile(f"{path} does not hold a saved dict (it holds a {type(obj).__name__}).")
    want = obj.pop("sha256", None)
    if want is None and "rng" in obj:
        raise CorruptFile(f"{path} has lost its sha256 entry.")
    if want is not None and state_digest(obj) != want:
        raise CorruptFile(f"{path} fails its sha256 check (corrupt on disk).")
    return obj


# What the study writes: changes there say nothing about the code that produced them, and a batch
# rewrites its own committed results, so they never make a commit "+dirty".
OUTPUTS = ("results", "figures", "notebooks/executed", "README.md")


def git_commit() -> str:
    """The commit of the dtlib checkout, with ``+dirty`` when files other than OUTPUTS have
    uncommitted changes."""
    try:
        run = lambda *a: subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, timeout=10)
        sha = run("rev-parse", "HEAD")
        if sha.returncode != 0:
            return "unknown"
        dirty = run("status", "--porcelain", "--untracked-files=no", "--", ".",
                    *[f":(exclude){p}" for p in OUTPUTS]).stdout.strip()
        return sha.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({cpu_model()}, {platform.machine()}, {torch.get_num_threads()} threads)"


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_bf16_features() -> list[str]:
    """The CPU's bf16 instruction sets (amx_bf16, avx512_bf16): what precision=auto looks for."""
    info = _cpuinfo()
    return [f for f in ("amx_bf16", "avx512_bf16") if re.search(rf"\b{f}\b", info)]


def cpu_model() -> str:
    """The CPU's model name and its bf16 features (results from CPUs with and without them
    differ: the provenance has to say which)."""
    name = re.search(r"^model name\s*:\s*(.+)$", _cpuinfo(), re.M)
    model = name.group(1).strip() if name else platform.processor() or "unknown CPU"
    return f"{model}; {', '.join(cpu_bf16_features()) or 'no bf16 instructions'}"


def provenance(device: torch.device) -> dict[str, Any]:
    return {
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device_name(device),
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
