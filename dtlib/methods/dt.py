"""``dt``: Democratic Training as the seed summary states it (docs/protocol.md section 1)."""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from ..attacks import perturb
from ..config import Config
from ..losses import dt_loss, ensemble_cross_entropy
from ..models import FrozenBNStats
from ..runtime import attack_module
from .base import RunningUAP


class DT(RunningUAP):
    """The Democratic Training loss (``losses.dt_loss``) on clean images and on the same images
    plus the running UAP, both in one forward pass (one batch of 2B images; with
    ``perturbed_fraction`` f < 1, B clean images and the first ceil(f B) of them perturbed).

    What the UAP ascends is ``cfg.uap_objective``: ``ensemble_ce``, the ensemble's cross-entropy on
    the perturbed half, whose gradient is not the loss's and so takes one input-gradient pass of its
    own through the same graph (no extra forward); or ``loss``, the DT loss itself (the min-max
    game's simultaneous update, as in UAT), whose gradient the weights' backward pass leaves in
    ``delta.grad`` at no cost. The two differ even at lambda_div = 0: BatchNorm's batch statistics
    mix both halves, so the clean terms depend on delta too, in every DT configuration alike (the
    lambda_div = 0 control included).

    With ``uap_every`` = n the UAP moves on batches 0, n, 2n, ... of the run only (one ``uap_step``
    each); the batches between train against it unchanged and skip its gradient pass. With
    ``uap_fraction`` f < 1, ``ensemble_ce``'s gradient comes from a pass of its own over the first
    ceil(f B) perturbed images of the (shuffled) batch, on the bare model (no DDP hooks), BatchNorm
    normalising by their batch statistics and leaving the running ones as they were: a forward and an
    input-gradient pass over f B images instead of an input-gradient pass through the 2B graph."""

    def __init__(self, model: nn.Module, cfg: Config, device: torch.device) -> None:
        super().__init__(model, cfg, device)
        self.batch = 0  # batches trained in this run: which of them move the UAP
        self.moves = True

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.cfg
        self.moves = self.batch % c.uap_every == 0
        delta = self._leaf(x) if self.moves else self._held()
        # the batch is shuffled, so its first images are as good a sample as any
        m = len(x) if c.perturbed_fraction == 1 else min(len(x), max(2, math.ceil(c.perturbed_fraction * len(x))))
        xp, yp = x[:m], y[:m]
        logits = self.model(torch.cat([x, perturb(xp, delta)]))
        clean, uap = logits[:, :len(x)], logits[:, len(x):]
        loss, self.parts = dt_loss(clean, uap, y, lambda_cons=c.lambda_cons, lambda_div=c.lambda_div,
                                   lambda_adv=c.lambda_adv, uap_y=yp)
        if c.uap_objective == "ensemble_ce" and self.moves:
            with self.clock.phase("uap_gradient"):
                if c.uap_fraction < 1:
                    self._grad = self._fraction_grad(xp, yp, delta)
                else:
                    self._grad, = torch.autograd.grad(ensemble_cross_entropy(uap, yp), delta, retain_graph=True)
        return loss, clean

    def _fraction_grad(self, x: torch.Tensor, y: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """The ensemble CE's gradient in delta over the first ceil(uap_fraction m) of the m perturbed images (at least 2)."""
        m = min(len(x), max(2, math.ceil(self.cfg.uap_fraction * len(x))))
        net = attack_module(self.model)
        with FrozenBNStats(net):
            logits = net(perturb(x[:m], delta))
        grad, = torch.autograd.grad(ensemble_cross_entropy(logits, y[:m]), delta)
        return grad

    def _held(self) -> torch.Tensor:
        """The perturbation for a batch that does not move it (batch 0 always moves: it exists),
        with no gradient collected."""
        self.delta = self.delta.detach()
        return self.delta

    def after_backward(self) -> None:
        if self.moves:
            super().after_backward()
        self.batch += 1

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "batch": self.batch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.batch = state.get("batch", 0)  # checkpoints written before uap_every moved the UAP every batch
