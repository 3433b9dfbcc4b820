"""``pgd_at``: PGD adversarial training (Madry et al., ICLR 2018), the per-example defense."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..attacks import pgd
from ..config import Config
from ..losses import heads_cross_entropy
from ..models import ensemble_log_probs
from ..runtime import attack_module
from .base import Step


class PGDAT(Step):
    """Train on PGD examples (pgd_steps steps of pgd_alpha in the L-inf ball of pgd_eps) made
    against the ensemble, with BatchNorm in training mode as is usual."""

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
