"""One training loop for every method; methods differ only in their per-batch step.

A step builds the batch's loss (``loss``) and, after the loop's backward pass, updates whatever
attack state it keeps (``after_backward``): the running universal perturbation of ``dt`` and
``uat`` (STUDY.md section 1: one signed-gradient step per batch on the ensemble loss, projected to
eps), nothing for ``standard`` and ``pgd_at``. The loop owns the optimizer, the schedule, mixed
precision, checkpoints and logging. It takes a ``Loader`` (DistributedSampler-style sharding) and
calls the model only through ``model(x)``, so a DDP-wrapped model and a sharded loader drop in.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .attacks import ascent, perturb, pgd, project
from .config import Config
from .data import Loader, Split
from .io import save_torch
from .losses import dt_loss, ensemble_cross_entropy, heads_cross_entropy
from .models import MultiHead, build_model, ensemble_log_probs

CHECKPOINT = "checkpoint.pt"


# ---------------------------------------------------------------------------------------------
# per-batch steps

class Step:
    """``standard``: the mean over heads of each head's cross-entropy on clean images."""

    def __init__(self, model: nn.Module, cfg: Config, device: torch.device):
        self.model, self.cfg, self.device = model, cfg, device

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
        self.delta = project(self.delta.detach() + self.cfg.uap_step * ascent(grad, self.cfg.norm),
                             self.cfg.eps, self.cfg.norm)
        self._grad = None

    def state_dict(self) -> dict[str, Any]:
        return {"delta": self.delta.detach().cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.delta = state["delta"].to(self.device)


class UAT(RunningUAP):
    """``uat`` (Shafahi et al. 2020): train on x + delta only; the same backward pass gives the
    weights their descent gradient and delta its ascent gradient."""

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(perturb(x, self._leaf()))
        return heads_cross_entropy(logits, y), logits


class DT(RunningUAP):
    """``dt``: the Democratic Training loss (``losses.dt_loss``) on clean images and on the same
    images plus the running UAP, both in one forward pass. The UAP ascends the ensemble's
    cross-entropy on the perturbed half (taken from the same graph; no extra forward)."""

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        delta = self._leaf()
        logits = self.model(torch.cat([x, perturb(x, delta)]))
        clean, uap = logits.chunk(2, dim=1)
        c = self.cfg
        loss, _ = dt_loss(clean, uap, y, lambda_cons=c.lambda_cons, lambda_div=c.lambda_div, lambda_adv=c.lambda_adv)
        self._grad, = torch.autograd.grad(ensemble_cross_entropy(uap, y), delta, retain_graph=True)
        return loss, clean


class PGDAT(Step):
    """``pgd_at`` (Madry et al.): train on PGD examples (pgd_steps steps of pgd_alpha in the L-inf
    ball of pgd_eps) made against the ensemble, with BatchNorm in training mode as is usual."""

    def __init__(self, model: nn.Module, cfg: Config, device: torch.device):
        super().__init__(model, cfg, device)
        self.generator = torch.Generator().manual_seed(cfg.seed + 1)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.cfg
        x_adv = pgd(lambda z: ensemble_log_probs(self.model(z)), x, y, eps=c.pgd_eps, alpha=c.pgd_alpha,
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


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 for autocast, or None for float32. ``auto`` picks bf16 where it is fast: CUDA, and CPUs
    with AMX or AVX512-BF16 (1.6-2.8x faster training steps measured on such a CPU)."""
    if precision == "fp32":
        return None
    if precision == "bf16" or device.type == "cuda" or _cpu_has_bf16():
        return torch.bfloat16
    return None


def lr_factor(step: int, total: int, warmup: float) -> float:
    """Linear warm-up from 0 over ``warmup`` of the steps, then linear decay to 0."""
    w = max(1, round(warmup * total))
    return step / w if step < w else max(0.0, (total - step) / max(1, total - w))


# ---------------------------------------------------------------------------------------------
# the loop

def train(cfg: Config, train_split: Split, *, run_dir: str | Path | None = None, progress: bool = True,
          log: Callable[[str], None] = print) -> tuple[MultiHead, dict[str, Any]]:
    """Train a model for ``cfg`` on ``train_split`` (uint8 images); returns (model in eval mode, stats).

    With ``run_dir``, a checkpoint ``{model, optimizer, step, config, ...}`` is written there
    atomically after every epoch; an unfinished one for the same config is resumed from."""
    device = resolve_device(cfg.device)
    dtype = amp_dtype(cfg.precision, device)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(device, memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True,
                          weight_decay=cfg.weight_decay)
    loader = Loader(train_split.to(device), cfg.batch_size, train=True, seed=cfg.seed)
    total = cfg.epochs * len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, cfg.warmup))
    step_fn = STEPS[cfg.method](model, cfg, device)

    start_epoch, history, wall = 0, [], 0.0
    ckpt_path = Path(run_dir) / CHECKPOINT if run_dir else None
    if ckpt_path and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        if ckpt["config"] != cfg.to_dict():
            raise ValueError(f"{ckpt_path} was written for a different config; delete it or use another run directory.")
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        step_fn.load_state_dict(ckpt["method_state"])
        start_epoch, history, wall = ckpt["epoch"], ckpt["history"], ckpt["wall_s"]
        log(f"resuming {ckpt_path} at epoch {start_epoch}/{cfg.epochs}")

    def save(epoch: int) -> None:
        if ckpt_path:
            save_torch(ckpt_path, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                   "scheduler": sched.state_dict(), "step": epoch * len(loader), "epoch": epoch,
                                   "config": cfg.to_dict(), "method_state": step_fn.state_dict(),
                                   "history": history, "wall_s": wall, "finished": epoch == cfg.epochs})

    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        loader.set_epoch(epoch)
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        seen = 0
        bar = tqdm(loader, desc=f"{cfg.method} epoch {epoch + 1}/{cfg.epochs}", disable=not progress,
                   leave=False, unit="batch")
        for i, (x, y) in enumerate(bar):
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                loss, logits = step_fn.loss(x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            step_fn.after_backward()
            opt.step()
            sched.step()
            # accumulate on the device: no host sync inside the loop
            loss_sum += loss.detach() * len(y)
            correct += (ensemble_log_probs(logits.detach()).argmax(-1) == y).sum()
            seen += len(y)
            if progress and i % 10 == 9:
                bar.set_postfix(img_s=f"{seen / (time.perf_counter() - t0):.0f}")
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dt = time.perf_counter() - t0
        wall += dt
        stats = {"epoch": epoch + 1, "loss": loss_sum.item() / seen, "train_acc": correct.item() / seen,
                 "images_per_s": seen / dt, "seconds": dt}
        if not math.isfinite(stats["loss"]):
            raise FloatingPointError(f"Training loss became {stats['loss']} in epoch {epoch + 1}; lower lr or the loss weights.")
        history.append(stats)
        log(f"{cfg.method} epoch {epoch + 1}/{cfg.epochs}  loss {stats['loss']:.3f}  train acc {stats['train_acc']:.3f}"
            f"  {stats['images_per_s']:.0f} img/s  {dt:.1f} s")
        save(epoch + 1)
    model.eval()
    images = sum(h["images_per_s"] * h["seconds"] for h in history)
    return model, {"history": history, "wall_s": wall, "steps": total,
                   "images_per_s": images / wall if wall else float("nan"),
                   "precision": str(dtype).replace("torch.", "") if dtype else "float32",
                   "method_state": step_fn.state_dict()}
