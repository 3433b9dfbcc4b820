"""The per-batch step every method is: ``Step`` (which is also ``standard`` training) and
``RunningUAP``, the universal perturbation that ``dt`` and ``uat`` keep across batches."""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from ..attacks import ascent, project
from ..config import Config
from ..losses import heads_cross_entropy
from ..runtime import PhaseClock, distributed


class Step:
    """``standard``: the mean over heads of each head's cross-entropy on clean images.

    A method builds the batch's loss (``loss``) and, after the loop's backward pass, updates any
    attack state it keeps (``after_backward``); its state for a checkpoint is ``state_dict``.
    ``clock`` names the phases of its steps (``runtime.PhaseClock``)."""

    def __init__(self, model: nn.Module, cfg: Config, device: torch.device):
        self.model, self.cfg, self.device = model, cfg, device
        self.clock = PhaseClock(device)
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
