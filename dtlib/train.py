"""One training loop for every method; methods differ only in their per-batch step.

A step builds the batch's loss (``loss``) and, after the loop's backward pass, updates whatever
attack state it keeps (``after_backward``): the running universal perturbation of ``dt`` and
``uat`` (docs/protocol.md section 1: one signed-gradient step per batch on the ensemble loss, projected to
eps), nothing for ``standard`` and ``pgd_at``. The loop owns the optimizer, the schedule, mixed
precision, checkpoints and logging.

Ready for torch.distributed (DDP, torchrun): when a process group is initialised, the loader shards
like a DistributedSampler, ``train(wrap=...)`` wraps the model (e.g. in DistributedDataParallel),
the running UAP's gradient is summed over ranks before its sign is taken (every rank keeps the same
UAP), attacks run on the unwrapped module, and only rank 0 writes checkpoints.
"""
from __future__ import annotations

import math
import os
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.profiler import record_function
from tqdm.auto import tqdm as auto_bar
from tqdm.std import tqdm as text_bar

from .attacks import ascent, perturb, pgd, project
from .config import Config
from .data import Loader, Split
from .io import CorruptFile, cpu_bf16_features, load_verified, provenance, save_verified
from .losses import dt_loss, ensemble_cross_entropy, heads_cross_entropy
from .models import MultiHead, build_model, ensemble_log_probs

CHECKPOINT = "checkpoint.pt"


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


# ---------------------------------------------------------------------------------------------
# per-batch steps

class Step:
    """``standard``: the mean over heads of each head's cross-entropy on clean images."""

    def __init__(self, model: nn.Module, cfg: Config, device: torch.device):
        self.model, self.cfg, self.device = model, cfg, device
        self.parts: dict[str, torch.Tensor] = {}  # detached loss terms of the last batch, for the log

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scalar loss, per-head logits (K, B, C) of the images trained on, for train accuracy)."""
        logits = self.model(x)
        return heads_cross_entropy(logits, y), logits

    def after_backward(self) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class RunningUAP(Step):
    """Keeps one universal perturbation (1, 3, H, W), moved by ``uap_step`` along the ascent
    direction of its gradient after every batch and projected to the ``norm`` ball of radius eps."""

    def __init__(self, model: nn.Module, cfg: Config, device: torch.device):
        super().__init__(model, cfg, device)
        self.delta = torch.zeros(1, 3, 32, 32, device=device)
        self._grad: torch.Tensor | None = None

    def _leaf(self) -> torch.Tensor:
        self.delta = self.delta.detach().requires_grad_(True)
        return self.delta

    def after_backward(self) -> None:
        grad = self._grad if self._grad is not None else self.delta.grad
        if distributed():  # one UAP for all ranks: the gradient of the global batch
            dist.all_reduce(grad)
        self.delta = project(self.delta.detach() + self.cfg.uap_step * ascent(grad, self.cfg.norm),
                             self.cfg.eps, self.cfg.norm)
        self._grad = None

    def state_dict(self) -> dict[str, Any]:
        return {"delta": self.delta.detach().cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.delta = state["delta"].to(self.device)


class UAT(RunningUAP):
    """``uat`` (Shafahi et al. 2020): train on x + delta only; the same backward pass gives the
    weights their descent gradient and delta its ascent gradient (the simultaneous update). The
    loss is the heads' mean cross-entropy, which is the ensemble's for the usual K = 1."""

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(perturb(x, self._leaf()))
        return heads_cross_entropy(logits, y), logits


class DT(RunningUAP):
    """``dt``: the Democratic Training loss (``losses.dt_loss``) on clean images and on the same
    images plus the running UAP, both in one forward pass (one batch of 2B images).

    What the UAP ascends is ``cfg.uap_objective``: ``ensemble_ce``, the ensemble's cross-entropy on
    the perturbed half (docs/protocol.md section 1), whose gradient is not the loss's and so takes one
    input-gradient pass of its own through the same graph (no extra forward); or ``loss``, the DT
    loss itself (the min-max game's simultaneous update, as in UAT), whose gradient the weights'
    backward pass leaves in ``delta.grad`` at no cost. The two differ even at lambda_div = 0:
    BatchNorm's batch statistics mix both halves, so the clean terms depend on delta too, in every
    DT configuration alike (the lambda_div = 0 control included)."""

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        delta = self._leaf()
        logits = self.model(torch.cat([x, perturb(x, delta)]))
        clean, uap = logits.chunk(2, dim=1)
        c = self.cfg
        loss, self.parts = dt_loss(clean, uap, y, lambda_cons=c.lambda_cons, lambda_div=c.lambda_div,
                                   lambda_adv=c.lambda_adv)
        if c.uap_objective == "ensemble_ce":
            with phase("uap_gradient", x.device):
                self._grad, = torch.autograd.grad(ensemble_cross_entropy(uap, y), delta, retain_graph=True)
        return loss, clean


class PGDAT(Step):
    """``pgd_at`` (Madry et al.): train on PGD examples (pgd_steps steps of pgd_alpha in the L-inf
    ball of pgd_eps) made against the ensemble, with BatchNorm in training mode as is usual."""

    def __init__(self, model: nn.Module, cfg: Config, device: torch.device):
        super().__init__(model, cfg, device)
        self.generator = torch.Generator(device=device).manual_seed(cfg.seed + 1)  # random starts on the device

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.cfg
        net = attack_module(self.model)
        x_adv = pgd(lambda z: ensemble_log_probs(net(z)), x, y, eps=c.pgd_eps, alpha=c.pgd_alpha,
                    steps=c.pgd_steps, generator=self.generator)
        logits = self.model(x_adv)
        return heads_cross_entropy(logits, y), logits

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


STEPS: dict[str, type[Step]] = {"standard": Step, "dt": DT, "uat": UAT, "pgd_at": PGDAT}


# ---------------------------------------------------------------------------------------------
# devices and precision

def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but no CUDA device is available; use device=auto or cpu.")
    return torch.device(name)


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
    return "bf16" if amp_dtype(cfg.precision, resolve_device(cfg.device)) else "fp32"


def lr_factor(step: int, total: int, warmup: float) -> float:
    """Linear warm-up from 0 over ``warmup`` of the steps, then linear decay to 0."""
    w = max(1, round(warmup * total))
    return step / w if step < w else max(0.0, (total - step) / max(1, total - w))


# ---------------------------------------------------------------------------------------------
# the loop

def make_optimizer(model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum 0.9 and ``cfg.weight_decay``; the schedule scales ``cfg.lr``.
    On CUDA the fused kernel (one launch for all parameters); on CPU the default implementation,
    which the committed CPU results were trained with."""
    cuda = next(model.parameters()).device.type == "cuda"
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True,
                           weight_decay=cfg.weight_decay, fused=True if cuda else None)


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


# Per-phase wall clock of training steps (the benchmark's breakdown); None = not timing.
_phase_times: dict[str, float] | None = None


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing to wait for on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def phase(name: str, device: torch.device) -> Iterator[None]:
    """A named part of a training step: a ``torch.profiler`` range, and timed inside ``phase_clock``."""
    with record_function(name):
        if _phase_times is None:
            yield
            return
        sync(device)
        t0 = time.perf_counter()
        yield
        sync(device)
        _phase_times[name] = _phase_times.get(name, 0.0) + time.perf_counter() - t0


@contextmanager
def phase_clock() -> Iterator[dict[str, float]]:
    """Inside it, training steps add each phase's wall time (seconds; the device synchronised at
    every phase boundary, so only for a breakdown, never for the step times) to the yielded dict.
    Phases nest: ``uap_gradient`` (dt's second pass) is part of ``forward_and_loss``."""
    global _phase_times
    _phase_times = {}
    try:
        yield _phase_times
    finally:
        _phase_times = None


def train_step(step_fn: Step, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step of any method on a batch (images in [0, 1]); the loop and the
    benchmark both call this, so what is timed is what trains. Returns (loss, logits), detached
    from nothing: the caller decides when to read them (reading forces a host sync)."""
    x = x.contiguous(memory_format=torch.channels_last)
    with phase("forward_and_loss", x.device), \
            torch.autocast(x.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        loss, logits = step_fn.loss(x, y)
    opt.zero_grad(set_to_none=True)
    with phase("backward", x.device):
        loss.backward()
    with phase("uap_update", x.device):
        step_fn.after_backward()
    with phase("optimizer", x.device):
        opt.step()
    return loss, logits


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
    if written.group("train") != cfg.group("train"):
        diff = next(k for k, v in cfg.group("train").items() if written.group("train")[k] != v)
        raise ValueError(f"{path} was written for a different training config ({diff}={written.group('train')[diff]!r}, "
                         f"asked {cfg.group('train')[diff]!r}); delete it or use another run directory.")
    return ckpt


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


def train(cfg: Config, train_split: Split, *, run_dir: str | Path | None = None, progress: bool | str = True,
          log: Callable[[str], None] = print,
          wrap: Callable[[nn.Module], nn.Module] | None = None) -> tuple[MultiHead, dict[str, Any]]:
    """Train a model for ``cfg`` on ``train_split`` (uint8 images); returns (model in eval mode, stats).

    With ``run_dir``, a checkpoint ``{model, optimizer, step, config, ...}`` is written there
    atomically with its sha256 after every epoch, every ``cfg.checkpoint_minutes`` within an epoch,
    and on SIGTERM/SIGINT (then the run stops). An unfinished checkpoint of the same training config
    is resumed from, mid-epoch included: weights, optimizer, schedule, the method's state (running
    UAP, PGD generator), the epoch's running sums and the torch RNG states are all restored, and
    the data order and augmentation of an epoch depend only on (seed, epoch), so a resumed run ends
    with the same weights and metrics as an uninterrupted one (on CPU, tested by killing a process).
    ``wrap`` wraps the built model for the forward/backward passes (e.g. ``DistributedDataParallel``)."""
    progress = progress_mode(progress)
    device = resolve_device(cfg.device)
    dtype = amp_dtype(cfg.precision, device)
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed() else (0, 1)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(device, memory_format=torch.channels_last)
    net = prepare(wrap(model) if wrap else model, cfg)
    opt = make_optimizer(model, cfg)
    loader = Loader(train_split.to(device), cfg.batch_size, train=True, seed=cfg.seed, rank=rank, world_size=world)
    total = cfg.epochs * len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, cfg.warmup))
    step_fn = STEPS[cfg.method](net, cfg, device)
    made_by = provenance(device)

    start_epoch, start_batch, history, wall, partial = 0, 0, [], 0.0, None
    ckpt_path = Path(run_dir) / CHECKPOINT if run_dir else None
    ckpt = read_checkpoint(ckpt_path, cfg, log) if ckpt_path else None
    if ckpt:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        step_fn.load_state_dict(ckpt["method_state"])
        start_epoch, start_batch = ckpt["epoch"], ckpt.get("batch", 0)
        history, wall, partial, made_by = ckpt["history"], ckpt["wall_s"], ckpt.get("partial"), ckpt["provenance"]
        if "rng" in ckpt:
            torch.set_rng_state(ckpt["rng"]["torch"].cpu())
            if device.type == "cuda" and ckpt["rng"].get("cuda") is not None:
                torch.cuda.set_rng_state(ckpt["rng"]["cuda"].cpu(), device)
        log(f"resuming {ckpt_path} at epoch {start_epoch + 1}, batch {start_batch}/{len(loader)}"
            if start_batch else f"resuming {ckpt_path} at epoch {start_epoch}/{cfg.epochs}")

    def save(epoch: int, batch: int = 0, sums: dict[str, Any] | None = None) -> None:
        """``epoch`` epochs done, plus ``batch`` batches of the next one whose running sums are ``sums``."""
        if ckpt_path and rank == 0:
            rng = {"torch": torch.get_rng_state(),
                   "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}
            save_verified(ckpt_path, {
                "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "step": epoch * len(loader) + batch, "epoch": epoch, "batch": batch, "config": cfg.to_dict(),
                "method_state": step_fn.state_dict(), "history": history, "wall_s": wall,
                "finished": epoch == cfg.epochs, "precision": "bf16" if dtype else "fp32", "provenance": made_by,
                "partial": sums, "rng": rng})

    every = 60.0 * cfg.checkpoint_minutes
    with Stop() as stop:
        last_save = time.perf_counter()
        for epoch in range(start_epoch, cfg.epochs):
            net.train()
            loader.set_epoch(epoch)
            first = start_batch if epoch == start_epoch else 0
            t0 = time.perf_counter()
            # running sums on the device: no host sync inside the loop
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device)
            part_sums: dict[str, torch.Tensor] = {}
            seen, before = 0, 0.0
            if first and partial:
                loss_sum, correct = partial["loss_sum"].to(device), partial["correct"].to(device)
                part_sums = {k: v.to(device) for k, v in partial["parts"].items()}
                seen, before = partial["seen"], partial["seconds"]

            def sums() -> dict[str, Any]:
                return {"loss_sum": loss_sum.cpu(), "correct": correct.cpu(), "seen": seen,
                        "parts": {k: v.cpu() for k, v in part_sums.items()},
                        "seconds": before + time.perf_counter() - t0}

            bar = progress_bar(loader.batches(first), progress, desc=f"{cfg.method} epoch {epoch + 1}/{cfg.epochs}",
                               unit="batch", total=len(loader) - first)
            for i, (x, y) in enumerate(bar, start=first):
                loss, logits = train_step(step_fn, opt, x, y, dtype)
                sched.step()
                loss_sum += loss.detach() * len(y)
                correct += (ensemble_log_probs(logits.detach()).argmax(-1) == y).sum()
                for k, v in step_fn.parts.items():
                    part_sums[k] = part_sums.get(k, 0) + v * len(y)
                seen += len(y)
                if progress != "off" and i % 10 == 9:
                    bar.set_postfix(img_s=f"{(i + 1 - first) * cfg.batch_size / (time.perf_counter() - t0):.0f}")
                if i + 1 < len(loader) and (stop.signum or time.perf_counter() - last_save > every):
                    save(epoch, i + 1, sums())
                    last_save = time.perf_counter()
                    if stop.signum:
                        log(f"stopped by signal {stop.signum} at epoch {epoch + 1}, batch {i + 1}; checkpoint {ckpt_path}")
                        stop.exit()
            sync(device)
            dt = before + time.perf_counter() - t0
            wall += dt
            stats = {"epoch": epoch + 1, "loss": loss_sum.item() / seen, "train_acc": correct.item() / seen,
                     "images_per_s": seen / dt, "seconds": dt, **{k: v.item() / seen for k, v in part_sums.items()}}
            if not math.isfinite(stats["loss"]):
                raise FloatingPointError(f"Training loss became {stats['loss']} in epoch {epoch + 1}; lower lr or the loss weights.")
            history.append(stats)
            save(epoch + 1)
            last_save = time.perf_counter()
            terms = "".join(f"  {k} {stats[k]:.3f}" for k in part_sums)
            log(f"{cfg.method} epoch {epoch + 1}/{cfg.epochs}  loss {stats['loss']:.3f}{terms}  train acc {stats['train_acc']:.3f}"
                f"  {stats['images_per_s']:.0f} img/s  {dt:.1f} s")
            if stop.signum:
                log(f"stopped by signal {stop.signum} after epoch {epoch + 1}; checkpoint {ckpt_path}")
                stop.exit()
    model.eval()
    record = {"history": history, "wall_s": wall, "step": total, "precision": "bf16" if dtype else "fp32",
              "provenance": made_by}
    return model, {**train_summary(record), "method_state": step_fn.state_dict()}


def train_summary(ckpt: dict[str, Any]) -> dict[str, Any]:
    """What training cost and where it ran, from a checkpoint (or the same fields of a live run)."""
    h, wall = ckpt["history"], ckpt["wall_s"]
    images = sum(e["images_per_s"] * e["seconds"] for e in h)
    return {"wall_s": wall, "images_per_s": images / wall if wall else float("nan"), "steps": ckpt["step"],
            "final_loss": h[-1]["loss"], "final_train_acc": h[-1]["train_acc"], "precision": ckpt["precision"],
            "provenance": ckpt["provenance"], "history": h}
