"""Where and how a run executes, without changing what it computes: the device (and the provenance
that names it), what ``precision=auto`` means there, compilation and cuDNN settings, the model
wrappers of torch.compile and DDP, the phase clock of a training step, and progress bars."""
from __future__ import annotations

import os
import platform
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, Iterator

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.profiler import record_function
from tqdm.auto import tqdm as auto_bar
from tqdm.std import tqdm as text_bar

from .config import Config
from .io import cpu_bf16_features, cpu_model, git_commit
from .phases import PHASES


def device_of(name: str) -> torch.device:
    """The device ``name`` (auto | cpu | cuda) means here, changing nothing (for cache keys and settings)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} was asked for but no CUDA device is available; use device=auto or cpu.")
    return device


def resolve_device(name: str) -> torch.device:
    """The device a run computes on (as ``device_of``). On CUDA it also makes fp32 convolutions and
    matrix products IEEE fp32 for the process: PyTorch lets cuDNN round them to TF32 (a 10-bit
    mantissa) by default, and the run cache keys on the precision, so ``precision=fp32`` must mean
    the same on every device. Under bf16 autocast it touches only the operations autocast leaves in fp32."""
    device = device_of(name)
    if device.type == "cuda":
        # the legacy flags, not the fp32_precision settings: once those are set, reading the legacy
        # flags raises (torch 2.11-2.14), and other code, a user's attack too, may still read them
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    return device


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({cpu_model()}, {platform.machine()}, {torch.get_num_threads()} threads)"


def provenance(device: torch.device) -> dict[str, Any]:
    return {
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device_name(device),
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


# What precision="auto" resolves to, when set (bf16 | fp32). The machines this project runs on
# differ in CPU features, so CI runs the precision-sensitive tests once more under the precision
# this CPU would not pick; a user can pin it the same way.
PRECISION_ENV = "DTLIB_AUTO_PRECISION"


def auto_precision(device: torch.device) -> str:
    """What ``precision=auto`` means on ``device``: ``$DTLIB_AUTO_PRECISION`` when set, else bf16
    where it is fast (CUDA with bf16; CPUs with AMX or AVX512-BF16: 1.6-2.8x faster training
    steps measured on such a CPU), else fp32."""
    forced = os.environ.get(PRECISION_ENV, "").strip().lower()
    if forced:
        if forced not in ("bf16", "fp32"):
            raise ValueError(f"{PRECISION_ENV}={forced!r} must be bf16 or fp32 (or unset for this machine's choice).")
        return forced
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_bf16_features() else "fp32"


def amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 for autocast, or None for float32; ``auto`` as ``auto_precision`` resolves it."""
    if precision == "auto":
        precision = auto_precision(device)
    return torch.bfloat16 if precision == "bf16" else None


def precision_name(cfg: Config) -> str:
    """What ``cfg.precision`` means on this machine: "bf16" or "fp32"."""
    return "bf16" if amp_dtype(cfg.precision, device_of(cfg.device)) else "fp32"


def prepare(model: nn.Module, cfg: Config) -> nn.Module:
    """The module the training step calls: ``model`` itself, or compiled when ``cfg.compile``.
    On CUDA, cuDNN may pick its fastest convolution algorithms (``cudnn.benchmark``), unless
    ``cfg.deterministic`` asks for deterministic kernels instead (README, "Determinism")."""
    if next(model.parameters()).device.type == "cuda":
        torch.backends.cudnn.benchmark = not cfg.deterministic
        torch.backends.cudnn.deterministic = cfg.deterministic
        # warn_only: some CUDA backward kernels (e.g. max-pool's) have no deterministic version
        torch.use_deterministic_algorithms(cfg.deterministic, warn_only=True)
        if cfg.deterministic:  # cuBLAS reads it when it first starts, which is after this point
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # static shapes: the benchmark compiles several models whose batch sizes differ, and a shape
    # change must give its own graph rather than turn every graph dynamic
    return torch.compile(model, dynamic=False) if cfg.compile else model


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside torch.compile's and DDP's (or DataParallel's) wrappers; the model itself otherwise."""
    model = getattr(model, "_orig_mod", model)
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def attack_module(model: nn.Module) -> nn.Module:
    """What a training-time attack runs on: without DDP's wrapper (no gradient hooks or
    all-reduces for the attack's passes) but still compiled when the model is."""
    inner = getattr(model, "_orig_mod", None)
    if inner is not None and not hasattr(inner, "module"):
        return model
    return unwrap(model)


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing to wait for on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PhaseClock:
    """The phases (``phases.PHASES``) of one method's training steps. Every phase is a
    ``torch.profiler`` range; inside ``timing()`` each also adds its wall time to the yielded dict
    (seconds; the device is synchronised at every phase boundary, so only for a breakdown, never
    for step times). Each training step owns one (``Step.clock``): nothing global is switched."""

    def __init__(self, device: torch.device):
        self.device = device
        self._times: dict[str, float] | None = None

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if name not in PHASES:
            raise ValueError(f"Unknown training phase {name!r}; the phases are {', '.join(PHASES)}.")
        with record_function(name):
            if self._times is None:
                yield
                return
            sync(self.device)
            t0 = time.perf_counter()
            yield
            sync(self.device)
            self._times[name] = self._times.get(name, 0.0) + time.perf_counter() - t0

    @contextmanager
    def timing(self) -> Iterator[dict[str, float]]:
        self._times = {}
        try:
            yield self._times
        finally:
            self._times = None


# Progress bars: "auto" = a widget in JupyterLab, text in a terminal, gone when the epoch ends
# (its log line stays); "text" = plain text redrawn at most every TEXT_BAR_S seconds and kept as
# one line per epoch (what papermill stores in an executed notebook); "off".
PROGRESS = ("auto", "text", "off")
TEXT_BAR_S = 30.0


def progress_mode(progress: bool | str) -> str:
    """A PROGRESS name for ``progress`` (True = auto, False = off)."""
    mode = "auto" if progress is True else "off" if progress is False else progress
    if mode not in PROGRESS:
        raise ValueError(f"progress={progress!r} is not one of {', '.join(PROGRESS)}.")
    return mode


def progress_bar(iterable: Any, mode: str, **kw: Any) -> Any:
    """``iterable`` wrapped in the tqdm bar of ``mode`` (a PROGRESS name)."""
    if mode == "auto":
        return auto_bar(iterable, leave=False, **kw)
    return text_bar(iterable, disable=mode == "off", mininterval=TEXT_BAR_S, leave=True, **kw)
