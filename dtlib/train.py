"""One training loop for every method; methods differ only in their per-batch step (``methods``).

A step builds the batch's loss and, after the loop's backward pass, updates whatever attack state
it keeps (the running UAP of ``dt`` and ``uat``). The loop owns the optimizer, the schedule, mixed
precision, checkpoints (``checkpoint``) and logging; where it runs is ``runtime``'s business.

Under torch.distributed (``distributed``: torchrun, DDP), when a process group is initialised, the
loader shards like a DistributedSampler, ``train(wrap=...)`` wraps the model in DistributedDataParallel,
the running UAP's gradient is summed over ranks before its sign is taken (every rank keeps the same
UAP), attacks run on the unwrapped module, only rank 0 writes checkpoints, and at the end every rank
takes rank 0's BatchNorm statistics (the rest of the weights are equal already).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn as nn

from .checkpoint import CHECKPOINT, Stop, Writer, read_checkpoint, state_digest, train_summary
from .config import Config
from .data import FolderSplit, Split, file_digest, make_loader
from .distributed import agreed_signal, trace
from .methods import STEPS, Step
from .methods.base import warmup_decay
from .models import MultiHead, build_model, ensemble_log_probs
from .runtime import (amp_dtype, distributed, prepare, progress_bar, progress_mode, provenance, resolve_device,
                      sync)


def lr_factor(step: int, total: int, warmup: float) -> float:
    """Linear warm-up from 0 over ``warmup`` of the steps, then linear decay to 0."""
    return warmup_decay(warmup)(step, total)


def make_optimizer(model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """SGD with momentum 0.9 as the method's ``Schedule`` says (for all but entropy_dt: Nesterov,
    ``cfg.weight_decay``, peak ``cfg.lr``); the schedule's factor scales its lr. On CUDA the fused
    kernel (one launch for all parameters); on CPU the default implementation, which the committed
    CPU results were trained with."""
    plan = STEPS[cfg.method].schedule(cfg)
    cuda = next(model.parameters()).device.type == "cuda"
    return torch.optim.SGD(model.parameters(), lr=plan.lr, momentum=0.9, nesterov=plan.nesterov,
                           weight_decay=plan.weight_decay, fused=True if cuda else None)


def train_step(step_fn: Step, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step of any method on a batch (images in [0, 1]); the loop and the
    benchmark both call this, so what is timed is what trains. Returns (loss, logits), detached
    from nothing: the caller decides when to read them (reading forces a host sync)."""
    x = x.contiguous(memory_format=torch.channels_last)
    clock = step_fn.clock
    with clock.phase("forward_and_loss"), \
            torch.autocast(x.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        loss, logits = step_fn.loss(x, y)
    opt.zero_grad(set_to_none=True)
    with clock.phase("backward"):
        loss.backward()
    with clock.phase("uap_update"):
        step_fn.after_backward()
    with clock.phase("optimizer"):
        opt.step()
    return loss, logits


@dataclass
class EpochSums:
    """An epoch's running sums, kept on the device (no host sync inside the loop); ``before`` is
    the seconds the epoch had run before a resume, ``t0`` when this process started it."""
    loss: torch.Tensor
    correct: torch.Tensor
    parts: dict[str, torch.Tensor]
    seen: int = 0
    before: float = 0.0
    t0: float = field(default_factory=time.perf_counter)

    @classmethod
    def start(cls, device: torch.device, partial: dict[str, Any] | None = None) -> "EpochSums":
        """New sums, or those a checkpoint written inside the epoch kept (``partial``)."""
        if not partial:
            return cls(torch.zeros((), device=device), torch.zeros((), device=device), {})
        return cls(partial["loss_sum"].to(device), partial["correct"].to(device),
                   {k: v.to(device) for k, v in partial["parts"].items()}, partial["seen"], partial["seconds"])

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, parts: dict[str, torch.Tensor]) -> None:
        self.loss += loss.detach() * len(y)
        self.correct += (ensemble_log_probs(logits.detach()).argmax(-1) == y).sum()
        for k, v in parts.items():
            self.parts[k] = self.parts.get(k, 0) + v * len(y)
        self.seen += len(y)

    def seconds(self) -> float:
        return self.before + time.perf_counter() - self.t0

    def partial(self) -> dict[str, Any]:
        """What a checkpoint inside the epoch keeps of them."""
        return {"loss_sum": self.loss.cpu(), "correct": self.correct.cpu(), "seen": self.seen,
                "parts": {k: v.cpu() for k, v in self.parts.items()}, "seconds": self.seconds()}

    def stats(self, epoch: int, seconds: float) -> dict[str, Any]:
        """The epoch's log record (``epoch`` counted from 1); reads the sums (a host sync)."""
        return {"epoch": epoch, "loss": self.loss.item() / self.seen, "train_acc": self.correct.item() / self.seen,
                "images_per_s": self.seen / seconds, "seconds": seconds,
                **{k: v.item() / self.seen for k, v in self.parts.items()}}


class TrainState:
    """Everything a run carries from batch to batch and writes into its checkpoint
    ``{model, optimizer, step, config, ...}``: the model, its optimizer and schedule, the method's
    step, the finished epochs' history and wall time, and where the run stands."""

    def __init__(self, cfg: Config, split: Split | FolderSplit, wrap: Callable[[nn.Module], nn.Module] | None,
                 start: dict[str, Any] | None = None):
        self.cfg, self.device = cfg, resolve_device(cfg.device)
        self.dtype = amp_dtype(cfg.precision, self.device)
        self.rank, world = (dist.get_rank(), dist.get_world_size()) if distributed() else (0, 1)
        method, self.plan = STEPS[cfg.method], STEPS[cfg.method].schedule(cfg)
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg, split.classes).to(self.device, memory_format=torch.channels_last)
        if start is not None:  # a fine-tuning method: its base run's weights
            self.model.load_state_dict(start["model"])
        self.net = prepare(wrap(self.model) if wrap else self.model, cfg)
        self.opt = make_optimizer(self.model, cfg)
        self.loader = make_loader(method.training_images(cfg, split).to(self.device), self.plan.batch_size, train=True,
                                  seed=cfg.seed, rank=self.rank, world_size=world, rotation=self.plan.rotation)
        self.epochs = self.plan.epochs
        self.total = self.epochs * len(self.loader)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: self.plan.factor(s, self.total))
        self.step_fn = method(self.net, cfg, self.device)
        self.step_fn.begin(start.get("uaps") if start else None)
        self.made_by = provenance(self.device)
        if cfg.pretrained:  # the run key holds the path; this says which weights it held
            self.made_by["pretrained_sha256"] = file_digest(Path(cfg.pretrained))
        self.start_epoch, self.start_batch, self.history, self.wall, self.partial = 0, 0, [], 0.0, None

    @property
    def precision(self) -> str:
        return "bf16" if self.dtype else "fp32"

    def restore(self, ckpt: dict[str, Any]) -> None:
        """Resume from a checkpoint of the same training config (``checkpoint.read_checkpoint``)."""
        self.model.load_state_dict(ckpt["model"])
        if "optimizer" in ckpt:  # a finished run unpacked from a pack (study.carry) holds none, and has no step left
            self.opt.load_state_dict(ckpt["optimizer"])
        self.sched.load_state_dict(ckpt["scheduler"])
        self.step_fn.load_state_dict(ckpt["method_state"])
        self.start_epoch, self.start_batch = ckpt["epoch"], ckpt.get("batch", 0)
        self.history, self.wall, self.partial, self.made_by = (ckpt["history"], ckpt["wall_s"], ckpt.get("partial"),
                                                               ckpt["provenance"])
        if "rng" in ckpt:
            torch.set_rng_state(ckpt["rng"]["torch"].cpu())
            if self.device.type == "cuda" and ckpt["rng"].get("cuda") is not None:
                torch.cuda.set_rng_state(ckpt["rng"]["cuda"].cpu(), self.device)

    def checkpoint(self, epoch: int, batch: int = 0, sums: EpochSums | None = None) -> dict[str, Any]:
        """``epoch`` epochs done, plus ``batch`` batches of the next one whose running sums are ``sums``."""
        rng = {"torch": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None}
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(), "step": epoch * len(self.loader) + batch, "epoch": epoch,
                "batch": batch, "config": self.cfg.to_dict(), "method_state": self.step_fn.state_dict(),
                "history": self.history, "wall_s": self.wall, "finished": epoch == self.epochs,
                "precision": self.precision, "provenance": self.made_by,
                "partial": sums.partial() if sums else None, "rng": rng}

    def end_epoch(self, epoch: int, sums: EpochSums) -> dict[str, Any]:
        """Close epoch ``epoch`` (from 0): its stats into the history, its time into the wall time."""
        sync(self.device)
        seconds = sums.seconds()
        self.wall += seconds
        stats = sums.stats(epoch + 1, seconds)
        if not math.isfinite(stats["loss"]):
            raise FloatingPointError(f"Training loss became {stats['loss']} in epoch {epoch + 1}; lower lr or the loss weights.")
        self.history.append(stats)
        return stats


def train(cfg: Config, train_split: Split | FolderSplit, *, run_dir: str | Path | None = None, progress: bool | str = True,
          log: Callable[[str], None] = print, wrap: Callable[[nn.Module], nn.Module] | None = None,
          start: dict[str, Any] | None = None) -> tuple[MultiHead, dict[str, Any]]:
    """Train a model for ``cfg`` on ``train_split`` (uint8 images, or files streamed); returns (model in eval mode, stats).

    With ``run_dir``, a checkpoint ``{model, optimizer, step, config, ...}`` is written there
    atomically with its sha256 after every epoch, every ``cfg.checkpoint_minutes`` within an epoch,
    and on SIGTERM/SIGINT (then the run stops). An unfinished checkpoint of the same training config
    is resumed from, mid-epoch included: weights, optimizer, schedule, the method's state (running
    UAP, PGD generator), the epoch's running sums and the torch RNG states are all restored, and
    the data order and augmentation of an epoch depend only on (seed, epoch), so a resumed run ends
    with the same weights and metrics as an uninterrupted one (on CPU, tested by killing a process).
    ``wrap`` wraps the built model for the forward/backward passes (e.g. ``DistributedDataParallel``).
    ``start``: for a method that fine-tunes a base run (``Step.base``), that run's ``{"model": state
    dict, "uaps": its evaluation UAPs or None}`` (``experiment.ensure_trained`` finds it)."""
    progress = progress_mode(progress)
    if STEPS[cfg.method].base(cfg) and start is None:
        raise ValueError(f"method={cfg.method!r} fine-tunes a finished run; pass its weights as start (dtlib.run finds them).")
    s = TrainState(cfg, train_split, wrap, start)
    path = Path(run_dir) / CHECKPOINT if run_dir else None
    ckpt = read_checkpoint(path, cfg, log) if path else None
    if ckpt:
        s.restore(ckpt)
        log(f"resuming {path} at epoch {s.start_epoch + 1}, batch {s.start_batch}/{len(s.loader)}"
            if s.start_batch else f"resuming {path} at epoch {s.start_epoch}/{s.epochs}")
    with Stop() as stop:
        writer = Writer(path if s.rank == 0 else None, cfg.checkpoint_minutes)
        for epoch in range(s.start_epoch, s.epochs):
            s.net.train()
            s.loader.set_epoch(epoch)
            first = s.start_batch if epoch == s.start_epoch else 0
            trace(lambda: {"epoch": epoch, "from_batch": first, "indices": s.loader.indices().tolist()})  # its shard
            s.step_fn.start_epoch(epoch, s.opt, fresh=first == 0)
            sums = EpochSums.start(s.device, s.partial if first else None)
            bar = progress_bar(s.loader.batches(first), progress, desc=f"{cfg.method} epoch {epoch + 1}/{s.epochs}",
                               unit="batch", total=len(s.loader) - first)
            for i, (x, y) in enumerate(bar, start=first):
                loss, logits = train_step(s.step_fn, s.opt, x, y, s.dtype)
                s.sched.step()
                sums.add(loss, logits, y, s.step_fn.parts)
                if progress != "off" and i % 10 == 9:
                    bar.set_postfix(img_s=f"{(i + 1 - first) * s.plan.batch_size / (time.perf_counter() - sums.t0):.0f}")
                stop.signum = agreed_signal(stop.signum, s.device)
                if i + 1 < len(s.loader) and (stop.signum or writer.due()):
                    writer.write(s.checkpoint(epoch, i + 1, sums))
                    if stop.signum:
                        log(f"stopped by signal {stop.signum} at epoch {epoch + 1}, batch {i + 1}; checkpoint {path}")
                        stop.exit()
            stats = s.end_epoch(epoch, sums)
            writer.write(s.checkpoint(epoch + 1))
            terms = "".join(f"  {k} {stats[k]:.3f}" for k in sums.parts)
            log(f"{cfg.method} epoch {epoch + 1}/{s.epochs}  loss {stats['loss']:.3f}{terms}  train acc "
                f"{stats['train_acc']:.3f}  {stats['images_per_s']:.0f} img/s  {stats['seconds']:.1f} s")
            stop.signum = agreed_signal(stop.signum, s.device)
            if stop.signum:
                log(f"stopped by signal {stop.signum} after epoch {epoch + 1}; checkpoint {path}")
                stop.exit()
    if distributed():  # BatchNorm's running statistics follow each rank's own batches: rank 0's, as saved, for all
        for buffer in s.model.buffers():
            dist.broadcast(buffer, 0)
    s.model.eval()
    trace(lambda: {"parameters": state_digest(dict(s.model.named_parameters())),
                   "weights": state_digest(s.model.state_dict()), "method_state": state_digest(s.step_fn.state_dict())})
    record = {"history": s.history, "wall_s": s.wall, "step": s.total, "precision": s.precision,
              "provenance": s.made_by}
    return s.model, {**train_summary(record), "method_state": s.step_fn.state_dict()}
