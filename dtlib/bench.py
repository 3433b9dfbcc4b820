"""Cost measured in one process (docs/protocol.md section 3): median training-step time per method and
inference latency per mode, on the same data and backbone, after warm-up; ``python -m dtlib.bench``.

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

import dataclasses
import os
import re
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from itertools import cycle
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from .config import KIND_NAMES, Config, coerce, key_values, parse_text
from .data import DataError, Loader, Split
from .experiment import load_data
from .io import atomic_path, provenance, write_json
from .models import build_model
from .train import (STEPS, amp_dtype, make_optimizer, phase_clock, precision_name, prepare, resolve_device,
                    sync, train, train_step)


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
        self.model = build_model(cfg).to(device, memory_format=torch.channels_last).train()
        self.opt = make_optimizer(self.model, cfg)
        self.step_fn = STEPS[cfg.method](prepare(self.model, cfg), cfg, device)
        self.batches = cycle(list(Loader(split, cfg.batch_size, train=True, seed=cfg.seed)))
        self.times: list[float] = []
        self.memory: dict[str, float] = {}

    def step(self, timed: bool = True) -> None:
        x, y = next(self.batches)
        sync(self.device)
        t0 = time.perf_counter()
        train_step(self.step_fn, self.opt, x, y, self.dtype)
        sync(self.device)
        if timed:
            self.times.append(time.perf_counter() - t0)

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
        """Mean milliseconds per step spent in each phase (``train.phase_clock``)."""
        with phase_clock() as clock:
            for _ in range(steps):
                self.step(timed=False)
        return {k: 1e3 * v / steps for k, v in clock.items()}

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
                per[where][e.name] = per[where].get(e.name, 0.0) + e.self_cpu_time_total / 1e3 / steps
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
    """Median wall time of one training step (seconds), images per second, training memory and,
    when ``reference`` is a case, the ratio to it (median / median) with the quartiles of the
    per-round ratios, for each case.

    ``cases`` maps a name to Config overrides of ``base`` (e.g. ``{"dt_k5": {"method": "dt",
    "heads": 5}}``); ``split`` holds the images (uint8) all cases draw their batches from; the
    cases named in ``profile`` also get a per-phase breakdown (``train.phase_clock``)."""
    device = resolve_device(base.device)
    split = split.to(device)
    built = {name: _Case(base.replace(**o), split, device) for name, o in cases.items()}
    for case in built.values():
        case.step(timed=False)
        case.measure_memory()
    for r in range(warmup + steps):
        for case in built.values():
            case.step(timed=r >= warmup)
    out = {}
    for name, c in built.items():
        med = statistics.median(c.times)
        out[name] = {"median_s": med, "quartiles_s": _quartiles(c.times), "times_s": c.times,
                     "batch_size": c.cfg.batch_size, "images_per_s": c.cfg.batch_size / med,
                     "memory": c.memory, "config": cases[name]}
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
    x = torch.rand(batch_size, 3, 32, 32, generator=g).to(device).contiguous(memory_format=torch.channels_last)
    built = {}
    for name, o in cases.items():
        o = dict(o)
        mode = o.pop("mode", "single")
        model = build_model(base.replace(**o)).to(device, memory_format=torch.channels_last).eval()
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


# ---------------------------------------------------------------------------------------------
# python -m dtlib.bench

@dataclass(frozen=True)
class Bench:
    """The benchmark's settings. ``config`` is the base of every case (backbone, batch size,
    device, precision, DT's loss weights); a case changes only method, K, checkpointing or the
    UAP objective. The DT cases use the full loss (lambda_div = lambda_adv = 1): every term is
    computed, and the step's work does not depend on the weights' values."""
    steps: int = 30                                  # timed steps per case; the median is reported
    warmup: int = 5                                  # untimed rounds first (allocator, caches, cuDNN)
    ks: tuple[int, ...] = (1, 2, 5, 10)              # DT's K, each with and without checkpointing
    infer_batch: int = 256
    infer_steps: int = 60
    profile_steps: int = 5                           # steps timed phase by phase for the breakdown
    epoch: bool = False                              # also time a standard epoch on 50,000 images
    out: str = "results"                             # folder of bench-<device>.json
    config: Config = field(default_factory=lambda: Config(data="mini", lambda_div=1.0, lambda_adv=1.0))


BENCH_FIELDS = {f.name: f for f in fields(Bench) if f.name != "config"}
# A GPU's defaults: the GPU profile's backbone and a batch that fills an H100, more steps (they are
# cheap), and the epoch time of a fast-training bar (standard ResNet-18, CIFAR-10, <= 5 s on an H100).
CUDA_DEFAULTS: dict[str, Any] = dict(steps=50, warmup=10, epoch=True, infer_batch=1024, backbone="resnet18",
                                     batch_size=512)
# The project's engineering targets for its own implementation (stricter than the summary's C4 and C5 in
# docs/protocol.md; the claims rows use the summary's figures): a ratio key and its bound.
TARGETS = {"dt_k5_train": 2.0, "single_head_infer": 1.02, "ensemble_k5_infer": 1.10, "memory_k10_over_k1": 1.10,
           "standard_epoch_s": 5.0}


def setup(overrides: dict[str, Any] | None = None) -> Bench:
    """A Bench from ``key=value`` overrides (Bench or Config field names; strings as on the
    command line), starting from CUDA_DEFAULTS when the device is a GPU."""
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(BENCH_FIELDS) - {f.name for f in fields(Config)})
    if unknown:
        raise ValueError(f"Unknown benchmark setting {unknown[0]!r}; use a Bench field "
                         f"({', '.join(BENCH_FIELDS)}) or a Config field (python -m dtlib fields).")
    device = resolve_device(str(overrides.get("device", "auto")))
    merged = {**(CUDA_DEFAULTS if device.type == "cuda" else {}), **overrides}
    bench_kw, cfg_kw = {}, {}
    for name, value in merged.items():
        if name in BENCH_FIELDS:
            bench_kw[name] = _bench_value(name, value)
        else:
            cfg_kw[name] = value
    b = Bench(**bench_kw)
    b = dataclasses.replace(b, config=b.config.replace(**coerce(cfg_kw)))
    for name in ("steps", "infer_steps", "profile_steps", "infer_batch"):
        if getattr(b, name) < 1:
            raise ValueError(f"{name} must be at least 1, got {getattr(b, name)}.")
    if b.warmup < 0:
        raise ValueError(f"warmup must be non-negative, got {b.warmup}.")
    if not {1, 5, 10} <= set(b.ks) or min(b.ks) < 1:
        raise ValueError(f"ks={b.ks} must hold 1, 5 and 10 (the reported ratios) and no K below 1.")
    return b


def _bench_value(name: str, value: Any) -> Any:
    kind = type(BENCH_FIELDS[name].default)
    if not isinstance(value, str):
        return tuple(value) if kind is tuple else value
    try:
        return parse_text(value, kind)
    except ValueError:
        raise ValueError(f"Benchmark setting {name}={value!r} is not {KIND_NAMES[kind]}.") from None


def train_cases(b: Bench) -> dict[str, dict[str, Any]]:
    """standard; standard at twice the batch (DT's forward/backward work without DT); DT per K with
    and without checkpointing; DT K=5 with the UAP ascending the loss (no second pass); PGD-AT; UAT."""
    cases: dict[str, dict[str, Any]] = {"standard": dict(method="standard", heads=1),
                                        "standard_2b": dict(method="standard", heads=1,
                                                            batch_size=2 * b.config.batch_size)}
    for k in b.ks:
        cases[f"dt_k{k}"] = dict(method="dt", heads=k)
        if not b.config.compile:  # torch.compile does not take the checkpointed stages (Config says so)
            cases[f"dt_k{k}_ckpt"] = dict(method="dt", heads=k, checkpointing=True)
    cases["dt_k5_loss"] = dict(method="dt", heads=5, uap_objective="loss")
    cases["pgd_at"] = dict(method="pgd_at", heads=1)
    cases["uat"] = dict(method="uat", heads=1)
    return cases


# The names for some ratios; every other case is reported as <case>_train or <case>_infer.
RATIO_KEYS = {"pgd_at": "pgd_train", "single_head_k5": "single_head_infer", "ensemble_k5": "ensemble_k5_infer"}
INFER_CASES = {"plain": dict(heads=1, mode="single"), "single_head_k5": dict(heads=5, mode="single"),
               "ensemble_k5": dict(heads=5, mode="ensemble")}


def bench_split(cfg: Config, images: int) -> Split:
    """The first ``images`` training images of ``cfg``'s data (uint8), which every case draws from."""
    train_split, _, _ = load_data(cfg)
    return train_split.subset(torch.arange(min(images, len(train_split))))


def time_epoch(cfg: Config, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Wall time of a standard training epoch on 50,000 images: CIFAR-10's training set when it is
    in place, random images otherwise (the time does not depend on the pixels). Two epochs are run
    and the second is reported, so one-time costs (cuDNN autotuning, compilation) stay out."""
    try:
        split, source = load_data(cfg.replace(data="full", train_size=0, val_size=0))[0], "cifar10"
    except DataError:
        g = torch.Generator().manual_seed(0)
        split = Split(torch.randint(0, 256, (50000, 3, 32, 32), dtype=torch.uint8, generator=g),
                      torch.randint(0, 10, (50000,), generator=g))
        source = "random images (CIFAR-10 not in place)"
    _, stats = train(cfg.replace(method="standard", heads=1, epochs=2), split, progress=False, log=log)
    second = stats["history"][1]
    return {"seconds": second["seconds"], "images_per_s": second["images_per_s"], "images": len(split),
            "data": source, "first_epoch_s": stats["history"][0]["seconds"]}


def device_slug(device: torch.device) -> str:
    """``cpu`` or the GPU's name in lower case with dashes (e.g. ``nvidia-h100-80gb-hbm3``)."""
    if device.type != "cuda":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")


def run(bench: Bench | None = None, *, root: str | Path = ".", log: Callable[[str], None] = print,
        **overrides: Any) -> dict[str, Any]:
    """Run every case of ``bench`` (or of ``setup(overrides)``), write ``<out>/bench-<device>.json``
    atomically and return its record."""
    t0 = time.perf_counter()
    b = bench or setup(overrides)
    cfg = b.config
    device = resolve_device(cfg.device)
    log(f"benchmark on {provenance(device)['device']}: {cfg.backbone}, batch {cfg.batch_size}, "
        f"{precision_name(cfg)}, {b.steps} timed steps per case after {b.warmup}")
    if cfg.compile:  # one graph per case and batch shape: more than Dynamo's default limit of recompiles
        import torch._dynamo.config as dynamo_config
        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(dynamo_config, name):
                setattr(dynamo_config, name, max(getattr(dynamo_config, name), 64))
    split = bench_split(cfg, 2 * cfg.batch_size * 8)
    cases = train_cases(b)
    steps = training_steps(cfg, split, cases, steps=b.steps, warmup=b.warmup,
                           profile=("standard", "standard_2b", "dt_k5", "dt_k5_loss"), profile_steps=b.profile_steps)
    infer = inference_latency(cfg, INFER_CASES, batch_size=b.infer_batch, steps=b.infer_steps, warmup=b.warmup)
    epoch = time_epoch(cfg, log) if b.epoch else None

    ratios, spread = {}, {}
    for kind, part in (("train", steps), ("infer", infer)):
        for name, c in part.items():
            if name not in ("standard", "plain"):
                key = RATIO_KEYS.get(name, f"{name}_{kind}")
                ratios[key], spread[key] = c["ratio"], c["ratio_quartiles"]
    keys = ("peak_mb", "cuda_peak_mb") if device.type == "cuda" else ("peak_mb",)
    memory = {k: {**{key: steps[f"dt_k{k}"]["memory"][key] for key in keys},
                  **{f"{key}_checkpointing": steps[f"dt_k{k}_ckpt"]["memory"][key] for key in keys
                     if f"dt_k{k}_ckpt" in steps}} for k in b.ks}
    mem_key = keys[-1]  # the allocator's peak on CUDA
    measured = {"dt_k5_train": ratios["dt_k5_train"], "single_head_infer": ratios["single_head_infer"],
                "ensemble_k5_infer": ratios["ensemble_k5_infer"],
                "memory_k10_over_k1": memory[10][mem_key] / memory[1][mem_key]}
    if epoch:
        measured["standard_epoch_s"] = epoch["seconds"]
    targets = {k: {"target": TARGETS[k], "measured": v, "met": v <= TARGETS[k]} for k, v in measured.items()}
    record = {
        "memory_note": "training memory of the eager step (under compile=true the tracker sees the "
                       "uncompiled operators)" if cfg.compile else "",
        "device": device_slug(device), "settings": {**{f: getattr(b, f) for f in BENCH_FIELDS}, "config": cfg.to_dict()},
        "precision": precision_name(cfg), "threads": torch.get_num_threads(),
        "ratios": ratios, "ratio_quartiles": spread, "targets": targets, "memory_by_k": memory,
        "train": steps, "inference": infer, "epoch": epoch,
        "wall_s": time.perf_counter() - t0, "provenance": provenance(device)}
    out = Path(root) / b.out / f"bench-{record['device']}.json"
    write_json(out, record)
    write_report(record, out.with_suffix(".md"))
    log(report(record))
    log(f"wrote {out} and its tables {out.with_suffix('.md').name} ({record['wall_s']:.0f} s)")
    return record


def write_report(record: dict[str, Any], path: Path) -> Path:
    """``report(record)`` into ``path`` atomically (what ``make readme`` copies into the README)."""
    with atomic_path(path) as tmp:
        tmp.write_text(f"<!-- written by `python -m dtlib.bench` (or `python -m dtlib.figures`) from "
                       f"{path.with_suffix('.json').name} -->\n" + report(record) + "\n")
    return path


def report(record: dict[str, Any]) -> str:
    """The benchmark's tables (Markdown): ratios to standard with their spread, images per
    second, memory per K, the targets, and where DT's step time goes."""
    gpu = record["device"] != "cpu"
    lines = ["| case | ratio to standard | per-round IQR | images/s | training memory (MB) |" + (" median ms |" if gpu else ""),
             "| --- | --- | --- | --- | --- |" + (" --- |" if gpu else "")]
    mem = "cuda_peak_mb" if gpu else "peak_mb"
    for name, c in record["train"].items():
        q = c["ratio_quartiles"]
        lines.append(f"| train: {name} | {c['ratio']:.2f}x | {q[0]:.2f}-{q[1]:.2f} | {c['images_per_s']:.0f} | "
                     f"{c['memory'][mem]:.1f} |" + (f" {1e3 * c['median_s']:.1f} |" if gpu else ""))
    for name, c in record["inference"].items():
        q = c["ratio_quartiles"]
        lines.append(f"| inference: {name} | {c['ratio']:.3f}x | {q[0]:.3f}-{q[1]:.3f} | {c['images_per_s']:.0f} | |"
                     + (f" {1e3 * c['median_s']:.2f} |" if gpu else ""))
    lines += ["", "| target | bound | measured | met |", "| --- | --- | --- | --- |"]
    for key, t in record["targets"].items():
        lines.append(f"| {key} | <= {t['target']:g} | {t['measured']:.3f} | {'yes' if t['met'] else 'no'} |")
    lines += ["", "| case | " + " | ".join(PHASES) + " | step (sum) |", "| --- |" + " --- |" * (len(PHASES) + 1)]
    for name, c in record["train"].items():
        if "phases_ms" in c:
            ph = phase_split(c["phases_ms"])
            lines.append(f"| {name} | " + " | ".join(f"{ph[p]:.1f}" for p in PHASES) + f" | {sum(ph.values()):.1f} |")
    s = record["settings"]["config"]
    lines.append(f"\nPhases in ms per step (device-synchronised at each boundary); {s['backbone']}, batch "
                 f"{s['batch_size']}, {record['precision']}, {record['provenance']['device']}, torch "
                 f"{record['provenance']['torch']}, commit {record['provenance']['git_commit'][:12]}.")
    ops = record["train"].get("dt_k5", {}).get("ops_ms")
    if ops:
        lines += ["", "Where a DT (K=5) step's time goes: operators with the most self time in each phase "
                  "(ms per step under torch.profiler, which adds overhead):", ""]
        for ph, top in ops.items():
            shown = [f"{k.removeprefix('aten::')} {v:.1f}" for k, v in top.items() if v >= 0.5]
            if shown:
                lines.append(f"- {ph}: " + ", ".join(shown))
    if record.get("epoch"):
        e = record["epoch"]
        lines.append(f"\nStandard epoch: {e['seconds']:.2f} s ({e['images_per_s']:.0f} images/s, {e['images']} images, {e['data']}).")
    return "\n".join(lines)


PHASES = ("forward_and_loss", "uap_gradient", "backward", "uap_update", "optimizer")


def phase_split(phases_ms: dict[str, float]) -> dict[str, float]:
    """Phases as disjoint parts: ``uap_gradient`` taken out of ``forward_and_loss``, which holds it."""
    out = {p: phases_ms.get(p, 0.0) for p in PHASES}
    out["forward_and_loss"] -= out["uap_gradient"]
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m dtlib.bench [key=value ...]``: Bench fields (steps, warmup, ks, infer_batch,
    infer_steps, profile_steps, epoch, out) and Config fields (backbone, batch_size, device, ...)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help", "help"):
        print(main.__doc__)
        return 0
    try:
        run(setup(key_values(argv)))
    except (ValueError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
