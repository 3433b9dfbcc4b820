"""Cost measured in one process (STUDY.md section 3): median training-step time per method and
inference latency per mode, on the same data and backbone, after warm-up.

Cases are timed round-robin (one step of each case per round), so drift of a shared machine (CPU
frequency, other processes) spreads over every case alike instead of biasing the last one timed.
Training memory is counted, on any device, as the bytes of parameters, gradients, optimizer state
and the tensors autograd saves for backward during one step (saved-tensor hooks); on CUDA the
allocator's peak is reported as well.
"""
from __future__ import annotations

import statistics
import time
from itertools import cycle
from typing import Any

import torch

from .config import Config
from .data import Loader, Split
from .models import build_model
from .train import STEPS, amp_dtype, make_optimizer, resolve_device, train_step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _saved_bytes(fn, exclude: set[int] = frozenset()) -> tuple[Any, int]:
    """Run ``fn()`` and count the bytes of distinct storages autograd saves for backward, except
    those whose data pointer is in ``exclude`` (the parameters, counted separately)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in exclude:
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


class _Case:
    """One training configuration, built once, stepping through its own batches."""

    def __init__(self, cfg: Config, split: Split, device: torch.device):
        torch.manual_seed(cfg.seed)
        self.cfg, self.device, self.dtype = cfg, device, amp_dtype(cfg.precision, device)
        self.model = build_model(cfg).to(device, memory_format=torch.channels_last).train()
        self.opt = make_optimizer(self.model, cfg)
        self.step_fn = STEPS[cfg.method](self.model, cfg, device)
        self.batches = cycle(list(Loader(split, cfg.batch_size, train=True, seed=cfg.seed)))
        self.times: list[float] = []
        self.memory: dict[str, float] = {}

    def step(self, timed: bool) -> None:
        x, y = next(self.batches)
        _sync(self.device)
        t0 = time.perf_counter()
        train_step(self.step_fn, self.opt, x, y, self.dtype)
        _sync(self.device)
        if timed:
            self.times.append(time.perf_counter() - t0)

    def measure_memory(self) -> None:
        x, y = next(self.batches)
        if self.device.type == "cuda":  # the other cases' models stay allocated: count above this baseline
            torch.cuda.reset_peak_memory_stats(self.device)
            baseline = torch.cuda.memory_allocated(self.device)
        params_ptrs = {p.untyped_storage().data_ptr() for p in self.model.parameters()}
        _, saved = _saved_bytes(lambda: train_step(self.step_fn, self.opt, x, y, self.dtype), params_ptrs)
        params = sum(p.numel() * p.element_size() for p in self.model.parameters())
        state = sum(t.numel() * t.element_size() for s in self.opt.state.values() for t in s.values()
                    if torch.is_tensor(t))
        mb = 2.0 ** -20
        self.memory = {"params_mb": params * mb, "grads_mb": params * mb, "optimizer_mb": state * mb,
                       "saved_activations_mb": saved * mb, "total_mb": (2 * params + state + saved) * mb}
        if self.device.type == "cuda":
            self.memory["cuda_peak_mb"] = (torch.cuda.max_memory_allocated(self.device) - baseline + params) * mb


def training_steps(base: Config, split: Split, cases: dict[str, dict[str, Any]], *, steps: int = 20,
                   warmup: int = 3) -> dict[str, dict[str, Any]]:
    """Median wall time of one training step (seconds) and training memory for each case.

    ``cases`` maps a name to Config overrides of ``base`` (e.g. ``{"dt_k5": {"method": "dt",
    "heads": 5}}``); ``split`` holds the images (uint8) all cases draw their batches from."""
    device = resolve_device(base.device)
    split = split.to(device)
    built = {name: _Case(base.replace(**o), split, device) for name, o in cases.items()}
    for case in built.values():
        case.measure_memory()
    for r in range(warmup + steps):
        for case in built.values():
            case.step(timed=r >= warmup)
    return {name: {"median_s": statistics.median(c.times), "times_s": c.times, "batch_size": c.cfg.batch_size,
                   "memory": c.memory, "config": cases[name]} for name, c in built.items()}


@torch.no_grad()
def inference_latency(base: Config, cases: dict[str, dict[str, Any]], *, batch_size: int = 256,
                      steps: int = 30, warmup: int = 5) -> dict[str, dict[str, Any]]:
    """Median forward time (seconds per batch of ``batch_size`` images) for each case: Config
    overrides plus ``mode`` ("ensemble" | "single"). Weights do not change the time, so the models
    are freshly initialised; precision and memory layout are those of evaluation."""
    device = resolve_device(base.device)
    dtype = amp_dtype(base.precision, device)
    g = torch.Generator().manual_seed(base.seed)
    x = torch.rand(batch_size, 3, 32, 32, generator=g).to(device).contiguous(memory_format=torch.channels_last)
    built = {}
    for name, o in cases.items():
        o = dict(o)
        mode = o.pop("mode", "single")
        model = build_model(base.replace(**o)).to(device, memory_format=torch.channels_last).eval()
        built[name] = (model, mode, [])
    for r in range(warmup + steps):
        for model, mode, times in built.values():
            _sync(device)
            t0 = time.perf_counter()
            with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                model.scores(x, mode)
            _sync(device)
            if r >= warmup:
                times.append(time.perf_counter() - t0)
    return {name: {"median_s": statistics.median(t), "times_s": t, "batch_size": batch_size, "config": cases[name]}
            for name, (_, _, t) in built.items()}
