"""The per-batch step every method is: ``Step`` (which is also ``standard`` training) and
``RunningUAP``, the universal perturbation that ``dt`` and ``uat`` keep across batches."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn as nn

from ..attacks import ascent, project
from ..config import Config
from ..data import Split
from ..losses import heads_cross_entropy
from ..runtime import PhaseClock, distributed


def warmup_decay(warmup: float) -> Callable[[int, int], float]:
    """Linear warm-up from 0 over ``warmup`` of the steps, then linear decay to 0: (step, total) -> factor."""
    def factor(step: int, total: int) -> float:
        w = max(1, round(warmup * total))
        return step / w if step < w else max(0.0, (total - step) / max(1, total - w))
    return factor


@dataclass(frozen=True)
class Schedule:
    """How the loop optimises a method's run: ``epochs`` passes over its training images in batches
    of ``batch_size`` (augmented by crop, flip and a random rotation of at most ``rotation``
    degrees), SGD with momentum 0.9 at ``lr`` times ``factor(step, total steps)``."""
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    nesterov: bool
    factor: Callable[[int, int], float]
    rotation: float = 0.0


class Step:
    """``standard``: the mean over heads of each head's cross-entropy on clean images.

    A method builds the batch's loss (``loss``) and, after the loop's backward pass, updates any
    attack state it keeps (``after_backward``); its state for a checkpoint is ``state_dict``.
    ``clock`` names the phases of its steps (``runtime.PhaseClock``). A method that fine-tunes
    another run names it (``base``); the loop starts from that run's weights (``begin``) and
    optimises as ``schedule`` says, on the images ``training_images`` picks."""

    def __init__(self, model: nn.Module, cfg: Config, device: torch.device):
        self.model, self.cfg, self.device = model, cfg, device
        self.clock = PhaseClock(device)
        self.parts: dict[str, torch.Tensor] = {}  # detached loss terms of the last batch, for the log
        self.epoch = 0

    @staticmethod
    def schedule(cfg: Config) -> Schedule:
        return Schedule(cfg.epochs, cfg.batch_size, cfg.lr, cfg.weight_decay, True, warmup_decay(cfg.warmup))

    @staticmethod
    def training_images(cfg: Config, split: Split) -> Split:
        return split

    @staticmethod
    def base(cfg: Config) -> tuple[Config, bool] | None:
        """(the config of the finished run this method fine-tunes, whether it needs that run's
        evaluation UAPs too), or None for a method trained from scratch."""
        return None

    def begin(self, uaps: dict[str, torch.Tensor] | None) -> None:
        """The base run's evaluation UAPs, before the first batch (methods whose ``base`` asks for them)."""

    def start_epoch(self, epoch: int, opt: torch.optim.Optimizer, fresh: bool = True) -> None:
        """Called before each epoch (counted from 0), a resumed one included (``fresh`` is False
        when it resumes from inside the epoch: the optimizer then holds the epoch's state)."""
        self.epoch = epoch

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
    """Keeps one universal perturbation (1, C, H, W: the shape of the images it first meets),
    moved by ``uap_step`` along the ascent direction of its gradient after every batch and
    projected to the ``norm`` ball of radius eps (docs/protocol.md section 1)."""

    def __init__(self, model: nn.Module, cfg: Config, device: torch.device):
        super().__init__(model, cfg, device)
        self.delta: torch.Tensor | None = None  # zeros at the first batch, or a checkpoint's
        self._grad: torch.Tensor | None = None

    def _leaf(self, x: torch.Tensor) -> torch.Tensor:
        """The perturbation for the batch ``x``, as a leaf that collects its gradient."""
        if self.delta is None:
            self.delta = torch.zeros(1, *x.shape[1:], device=self.device)
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
        return {"delta": None if self.delta is None else self.delta.detach().cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.delta = None if state["delta"] is None else state["delta"].to(self.device)
