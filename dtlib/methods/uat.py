"""``uat``: universal adversarial training (Shafahi et al., AAAI 2020)."""
from __future__ import annotations

import torch

from ..attacks import perturb
from ..losses import heads_cross_entropy
from .base import RunningUAP


class UAT(RunningUAP):
    """Train on x + delta only; the same backward pass gives the weights their descent gradient
    and delta its ascent gradient (the simultaneous update). The loss is the heads' mean
    cross-entropy, which is the ensemble's for the usual K = 1."""

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(perturb(x, self._leaf(x)))
        return heads_cross_entropy(logits, y), logits
