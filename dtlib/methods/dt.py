"""``dt``: Democratic Training as the seed summary states it (docs/protocol.md section 1)."""
from __future__ import annotations

import torch

from ..attacks import perturb
from ..losses import dt_loss, ensemble_cross_entropy
from .base import RunningUAP


class DT(RunningUAP):
    """The Democratic Training loss (``losses.dt_loss``) on clean images and on the same images
    plus the running UAP, both in one forward pass (one batch of 2B images).

    What the UAP ascends is ``cfg.uap_objective``: ``ensemble_ce``, the ensemble's cross-entropy on
    the perturbed half, whose gradient is not the loss's and so takes one input-gradient pass of its
    own through the same graph (no extra forward); or ``loss``, the DT loss itself (the min-max
    game's simultaneous update, as in UAT), whose gradient the weights' backward pass leaves in
    ``delta.grad`` at no cost. The two differ even at lambda_div = 0: BatchNorm's batch statistics
    mix both halves, so the clean terms depend on delta too, in every DT configuration alike (the
    lambda_div = 0 control included)."""

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        delta = self._leaf(x)
        logits = self.model(torch.cat([x, perturb(x, delta)]))
        clean, uap = logits.chunk(2, dim=1)
        c = self.cfg
        loss, self.parts = dt_loss(clean, uap, y, lambda_cons=c.lambda_cons, lambda_div=c.lambda_div,
                                   lambda_adv=c.lambda_adv)
        if c.uap_objective == "ensemble_ce":
            with self.clock.phase("uap_gradient"):
                self._grad, = torch.autograd.grad(ensemble_cross_entropy(uap, y), delta, retain_graph=True)
        return loss, clean
