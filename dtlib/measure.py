"""Cost measured in one process (docs/protocol.md section 3): median training-step time per method and
inference latency per mode, on the same data and backbone, after warm-up. The study's 02 and 05
notebooks and the benchmark (``python -m dtlib.bench``, ``bench``) both measure with these.

Cases are timed round-robin (one step of each case per round), so drift of a shared machine (CPU
frequency, other processes) spreads over every case alike instead of biasing the last one timed;
each case's ratio to standard is also taken round by round, and the quartiles of those per-round
ratios are its spread.

Training memory, on any device, is what one step needs: parameters + optimizer state + the peak
of the tensors the step itself creates (activations kept for backward, gradients, temporaries
between operators), tracked operator by operator (``PeakTensorBytes``); on CUDA the allocator's
peak is reported beside it.
"""
from __future__ import annotations

import os
import re
import statistics
import sys
import time
from contextlib import contextmanager
from itertools import cycle
from typing import Any, Callable, Iterator

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from .config import Config
from .data import DataError, Loader, Split, fitting_pool, in_memory, load_data
from .imagenet import NATIVE_SIZE
from .evaluate import evaluate_model
from .io import cpu_flags
from .methods import STEPS
from .models import build_model
from .phases import PHASES
from .roofline import count_flops
from .runtime import amp_dtype, prepare, resolve_device, sync
from .train import make_optimizer, train, train_step


class PeakTensorBytes(TorchDispatchMode):
    """Peak bytes of the tensors created inside the block and alive at once, seen operator by
    operator (forward, backward and optimizer alike; checkpoint recomputation included). Tensors
    that existed before the block (parameters, optimizer state, the batch) are not counted, nor
    are in-place results and views of them; allocator caching and kernels' internal workspaces
    are invisible here."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 (torch's protocol)
        out = func(*args, **(kwargs or {}))
        for key in [k for k, (ref, _) in self.live.items() if ref.expired()]:
            self.current -= self.live.pop(key)[1]
        inputs = {StorageWeakRef(t.untyped_storage()).cdata for t in tree_leaves((args, kwargs))
                  if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                ref = StorageWeakRef(storage)
                if ref.cdata not in self.live and ref.cdata not in inputs:
                    self.live[ref.cdata] = (ref, storage.nbytes())
                    self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        return out


class _Case:
    """One training configuration, built once, stepping through its own batches."""

    def __init__(self, cfg: Config, split: Split, device: torch.device):
        torch.manual_seed(cfg.seed)
        self.cfg, self.device, self.dtype = cfg, device, amp_dtype(cfg.precision, device)
        self.model = build_model(cfg, split.classes).to(device, memory_format=torch.channels_last).train()
        self.opt = make_optimizer(self.model, cfg)
        method = STEPS[cfg.method]
        plan = method.schedule(cfg)  # the method's own batch size and augmentation, as the loop trains it
        self.step_fn = method(prepare(self.model, cfg), cfg, device)
        # timing only: a zero perturbation stands in for a leaked evaluation UAP (the same work)
        self.step_fn.begin({"head0": torch.zeros(1, *split.x.shape[1:])} if (method.base(cfg) or (None, False))[1] else None)
        self.batch_size = plan.batch_size
        self.batches = cycle(list(Loader(split, plan.batch_size, train=True, seed=cfg.seed, rotation=plan.rotation)))
        self.times: list[float] = []
        self.memory: dict[str, float] = {}
        self.flops = 0  # of one step, by torch's FLOP counter (0 where it sees no operator: compiled code)
        self.cycle = cfg.uap_every if cfg.method == "dt" else 1

    def step(self, timed: bool = True) -> None:
        """One step, or one cycle of ``cycle`` steps timed as their mean (DT with ``uap_every`` = n
        moves its UAP on one batch in n: a median over single steps would miss the costly one)."""
        batches = [next(self.batches) for _ in range(self.cycle)]
        sync(self.device)
        t0 = time.perf_counter()
        for x, y in batches:
            train_step(self.step_fn, self.opt, x, y, self.dtype)
        sync(self.device)
        if timed:
            self.times.append((time.perf_counter() - t0) / self.cycle)

    def measure_memory(self) -> None:
        """After at least one step (so the optimizer state exists): one step's training memory."""
        x, y = next(self.batches)
        cuda = self.device.type == "cuda"
        self.opt.zero_grad(set_to_none=True)  # the last step's gradients are not this step's memory
        if cuda:  # the other cases' models stay allocated: count above this baseline
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            baseline = torch.cuda.memory_allocated(self.device)
        with PeakTensorBytes() as tracker:
            train_step(self.step_fn, self.opt, x, y, self.dtype)
        params = sum(p.numel() * p.element_size() for p in self.model.parameters())
        state = sum(t.numel() * t.element_size() for s in self.opt.state.values() for t in s.values()
                    if torch.is_tensor(t))
        mb = 2.0 ** -20
        self.memory = {"params_mb": params * mb, "optimizer_mb": state * mb, "step_peak_mb": tracker.peak * mb,
                       "peak_mb": (params + state + tracker.peak) * mb}
        if cuda:
            sync(self.device)
            self.memory["cuda_peak_mb"] = (torch.cuda.max_memory_allocated(self.device) - baseline
                                           + params + state) * mb

    def profile(self, steps: int) -> dict[str, float]:
        """Mean milliseconds per step spent in each phase (``runtime.PhaseClock``)."""
        with self.step_fn.clock.timing() as clock:
            for _ in range(steps):
                self.step(timed=False)
        return {k: 1e3 * v / (steps * self.cycle) for k, v in clock.items()}

    def op_profile(self, steps: int, top: int = 6) -> dict[str, dict[str, float]]:
        """CPU only: per phase, the operators with the most self time (ms per step; torch.profiler),
        each counted in the innermost phase it ran in."""
        with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                self.step(timed=False)
        events = prof.events()
        spans = [(e.name, e.time_range.start, e.time_range.end) for e in events if e.name in PHASES]
        spans.sort(key=lambda s: s[2] - s[1])  # innermost first
        per: dict[str, dict[str, float]] = {p: {} for p in PHASES}
        for e in events:
            if e.name in PHASES:
                continue
            where = next((n for n, a, b in spans if a <= e.time_range.start <= b), None)
            if where:
                per[where][e.name] = per[where].get(e.name, 0.0) + e.self_cpu_time_total / 1e3 / (steps * self.cycle)
        return {p: dict(sorted(ops.items(), key=lambda kv: -kv[1])[:top]) for p, ops in per.items() if ops}


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence the profiler's native start/stop lines on file descriptor 2."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def training_steps(base: Config, split: Split, cases: dict[str, dict[str, Any]], *, steps: int = 20,
                   warmup: int = 3, reference: str = "standard", profile: tuple[str, ...] = (),
                   profile_steps: int = 3) -> dict[str, dict[str, Any]]:
    """Median wall time of one training step (seconds), images per second, training memory, the
    step's FLOPs (``roofline.count_flops``) and,
    when ``reference`` is a case, the ratio to it (median / median) with the quartiles of the
    per-round ratios, for each case.

    ``cases`` maps a name to Config overrides of ``base`` (e.g. ``{"dt_k5": {"method": "dt",
    "heads": 5}}``); ``split`` holds the images (uint8) all cases draw their batches from; the
    cases named in ``profile`` also get a per-phase breakdown (``runtime.PhaseClock``)."""
    device = resolve_device(base.device)
    split = split.to(device)
    built = {name: _Case(base.replace(**o), split, device) for name, o in cases.items()}
    for case in built.values():
        case.step(timed=False)
        case.measure_memory()
        case.flops = count_flops(lambda: case.step(timed=False)) / case.cycle  # noqa: B023 (called at once)
    for r in range(warmup + steps):
        for case in built.values():
            case.step(timed=r >= warmup)
    out = {}
    for name, c in built.items():
        med = statistics.median(c.times)
        out[name] = {"median_s": med, "quartiles_s": _quartiles(c.times), "times_s": c.times,
                     "batch_size": c.batch_size, "images_per_s": c.batch_size / med,
                     "memory": c.memory, "flops": c.flops or None, "config": cases[name]}
        if name in profile:
            out[name]["phases_ms"] = c.profile(profile_steps)
            if device.type == "cpu":  # a GPU runs kernels asynchronously: host-side op times say little
                out[name]["ops_ms"] = c.op_profile(profile_steps)
    if reference in out:
        for name, c in built.items():
            out[name].update(ratio_summary(c.times, built[reference].times))
    return out


def ratio_summary(times: list[float], reference: list[float]) -> dict[str, Any]:
    """``ratio``: median of ``times`` / median of ``reference``; ``ratio_quartiles``: the quartiles
    of the per-round ratios times[r] / reference[r] (the rounds were timed back to back)."""
    if len(times) != len(reference):
        raise ValueError(f"Got {len(times)} times but {len(reference)} reference times; rounds must pair up.")
    return {"ratio": statistics.median(times) / statistics.median(reference),
            "ratio_quartiles": _quartiles([t / r for t, r in zip(times, reference)])}


@torch.no_grad()
def inference_latency(base: Config, cases: dict[str, dict[str, Any]], *, batch_size: int = 256,
                      steps: int = 30, warmup: int = 5, reference: str = "plain") -> dict[str, dict[str, Any]]:
    """Median forward time (seconds per batch of ``batch_size`` images) for each case: Config
    overrides plus ``mode`` ("ensemble" | "single"); with the ratio to ``reference`` (median /
    median, and the quartiles of per-round ratios). Weights do not change the time, so the models
    are freshly initialised; precision and memory layout are those of evaluation."""
    device = resolve_device(base.device)
    dtype = amp_dtype(base.precision, device)
    g = torch.Generator().manual_seed(base.seed)
    side = (base.image_size or NATIVE_SIZE) if base.data == "imagenet" else 32  # the data's images and classes
    classes = load_data(base)[0].classes if base.data == "imagenet" else 10
    x = torch.rand(batch_size, 3, side, side, generator=g).to(device).contiguous(memory_format=torch.channels_last)
    built = {}
    for name, o in cases.items():
        o = dict(o)
        mode = o.pop("mode", "single")
        model = build_model(base.replace(**o), classes).to(device, memory_format=torch.channels_last).eval()
        built[name] = (model, mode, [])
    for r in range(warmup + steps):
        for model, mode, times in built.values():
            sync(device)
            t0 = time.perf_counter()
            with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                model.scores(x, mode)
            sync(device)
            if r >= warmup:
                times.append(time.perf_counter() - t0)
    out = {name: {"median_s": statistics.median(t), "quartiles_s": _quartiles(t), "times_s": t,
                  "batch_size": batch_size, "images_per_s": batch_size / statistics.median(t), "config": cases[name]}
           for name, (_, _, t) in built.items()}
    if reference in out:
        for name, (_, _, t) in built.items():
            out[name].update(ratio_summary(t, built[reference][2]))
    return out


def bench_split(cfg: Config, images: int) -> Split:
    """The first ``images`` training images of ``cfg``'s data (uint8, in memory), which every case draws from."""
    train_split, _, _ = load_data(cfg)
    return in_memory(train_split.subset(torch.arange(min(images, len(train_split)))))


def time_epoch(cfg: Config, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Wall time of a standard training epoch on 50,000 images: CIFAR-10's training set when it is
    in place, random images otherwise (the time does not depend on the pixels), whatever ``cfg.data``.
    Two epochs are run and the second is reported, so one-time costs (cuDNN autotuning, compilation)
    stay out."""
    cfg = cfg.replace(data="full", train_size=0, val_size=0, image_size=0, workers=Config.workers)
    try:
        split, source = load_data(cfg)[0], "cifar10"
    except DataError:
        g = torch.Generator().manual_seed(0)
        split = Split(torch.randint(0, 256, (50000, 3, 32, 32), dtype=torch.uint8, generator=g),
                      torch.randint(0, 10, (50000,), generator=g))
        source = "random images (CIFAR-10 not in place)"
    _, stats = train(cfg.replace(method="standard", heads=1, epochs=2), split, progress=False, log=log)
    second = stats["history"][1]
    return {"seconds": second["seconds"], "images_per_s": second["images_per_s"], "images": len(split),
            "data": source, "first_epoch_s": stats["history"][0]["seconds"]}


def time_evaluation(cfg: Config, cases: dict[str, dict[str, Any]], log: Callable[[str], None] = print,
                    epochs: int = 1) -> dict[str, dict[str, Any]]:
    """Wall time of one full evaluation per case (``evaluate.evaluate_model``: the attack suite
    against each of the model's inference modes, with ``cfg``'s eval settings and data), each on a
    model trained for ``epochs`` on ``cfg``'s training split (an untrained model would stop the
    fits early). The suite's work depends on when its stopping rule stops, so the SGD steps taken
    are reported beside the time, and the evaluation is also given in training epochs of that model."""
    device = resolve_device(cfg.device)
    train_split, _, test = load_data(cfg)
    out = {}
    for name, o in cases.items():
        c = cfg.replace(**o, epochs=epochs)
        model, stats = train(c, train_split, progress=False, log=log)
        model = model.to(device, memory_format=torch.channels_last)
        t0 = time.perf_counter()
        rows, _ = evaluate_model(model, c, fitting_pool(c).to(device), test.to(device), amp_dtype(c.precision, device))
        sync(device)
        seconds = time.perf_counter() - t0
        fits = [e for m in rows.values() for n, e in m["attack"].items() if n.startswith("sgd:")]
        first = next(iter(rows.values()))
        out[name] = {"seconds": seconds, "modes": list(rows), "sgd_fits": len(fits),
                     "sgd_steps": sum(e["steps"] for e in fits), "entries": sum(len(m["attack"]) for m in rows.values()),
                     "n_fit": first["n_fit"], "n_test": first["n_test"],
                     "train_epoch_s": stats["wall_s"] / epochs, "in_epochs": seconds / (stats["wall_s"] / epochs)}
        log(f"evaluation of {name}: {seconds:.1f} s, {out[name]['sgd_fits']} SGD-UAP fits, {out[name]['sgd_steps']} steps")
    return out


# The kinds of CPU whose timings differ most (bf16 fast or emulated, vector width), widest first.
CPU_KINDS = (("amx_bf16", "amx"), ("avx512_bf16", "avx512bf16"), ("avx512f", "avx512"), ("avx2", "avx2"))


def device_slug(device: torch.device) -> str:
    """``cpu-<kind>`` (``cpu-amx``, ``cpu-avx512bf16``, ``cpu-avx512``, ``cpu-avx2``; ``cpu`` for none
    of them), or the GPU's name in lower case with dashes (e.g. ``nvidia-h100-80gb-hbm3``)."""
    if device.type != "cuda":
        flags = cpu_flags()
        return next((f"cpu-{kind}" for flag, kind in CPU_KINDS if flag in flags), "cpu")
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")
