"""Files and where they come from: the project folder, atomic writes (nothing half-written is ever
left where a later run would trust it), the commit and the CPU a result was made with. No torch
here: the figures and tables are redrawn from results with this module."""
from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

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


def write_record(path: str | os.PathLike, record: Any, markdown: str) -> None:
    """A results record as JSON at ``path`` and its Markdown table beside it (``.md``), each atomically."""
    write_json(path, record)
    with atomic_path(Path(path).with_suffix(".md")) as tmp:
        tmp.write_text(markdown)


# What the study writes: changes there say nothing about the code that produced them, and a batch
# rewrites its own committed results, so they never make a commit "+dirty".
OUTPUTS = ("results", "figures", "notebooks/executed", "README.md", "runcache")


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


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_bf16_features() -> list[str]:
    """The CPU's bf16 instruction sets (amx_bf16, avx512_bf16): what precision=auto looks for."""
    flags = cpu_flags()
    return [f for f in ("amx_bf16", "avx512_bf16") if f in flags]


def cpu_flags() -> set[str]:
    """The instruction-set flags /proc/cpuinfo lists for the first CPU (empty where it cannot be read)."""
    line = re.search(r"^flags\s*:\s*(.+)$", _cpuinfo(), re.M)
    return set(line.group(1).split()) if line else set()


def cpu_vendor_family() -> tuple[str, int]:
    """The first CPU's vendor id and family number from /proc/cpuinfo (("", 0) where not listed)."""
    vendor = re.search(r"^vendor_id\s*:\s*(\S+)", _cpuinfo(), re.M)
    family = re.search(r"^cpu family\s*:\s*(\d+)", _cpuinfo(), re.M)
    return (vendor.group(1) if vendor else "", int(family.group(1)) if family else 0)


def cpu_mhz() -> float | None:
    """The clock /proc/cpuinfo reports for the first CPU, in MHz (None where it is not listed)."""
    line = re.search(r"^cpu MHz\s*:\s*([0-9.]+)", _cpuinfo(), re.M)
    return float(line.group(1)) if line else None


def cpu_model() -> str:
    """The CPU's model name and its bf16 features (results from CPUs with and without them
    differ: the provenance has to say which)."""
    name = re.search(r"^model name\s*:\s*(.+)$", _cpuinfo(), re.M)
    model = name.group(1).strip() if name else platform.processor() or "unknown CPU"
    return f"{model}; {', '.join(cpu_bf16_features()) or 'no bf16 instructions'}"
