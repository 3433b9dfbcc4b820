"""``entropy_dt``: Democratic Training as the published paper does it (Sun, Sun and Zhao, ICLR 2025;
the authors' code ``sunbing7/democratic_training``), not the seed summary's K-head loss.

It fine-tunes a finished standard model; no UAP is used to train. Each batch of the repair set
gets "low-entropy samples": from a random point of the eps ball, ``ent_steps`` signed-gradient
steps that lower the Shannon entropy of the softmax taken over the model's pooled penultimate
features (the vector before the classifier), projected to the ball after each step. The loss is
(1 - alpha) CE(clean) + alpha CE(low-entropy sample); then clean passes at a small learning rate
with a new optimizer (the published "repaired" model). ``ent_alpha=0`` is the control: the same
fine-tune on clean images alone, no sample made (the leak, a repair-phase setting, is refused with it). docs/protocol.md section 1 has the details,
and where the defaults differ from the published code: ``ent_clamp``, ``ent_bn``, ``ent_leak``.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..attacks import ascent, project, random_uap
from ..config import METHOD_FIELDS, Config
from ..data import Split, balanced_indices
from ..losses import entropy_from_log_probs, heads_cross_entropy
from ..metrics import perturb
from ..runtime import attack_module
from .base import Schedule, Step


def feature_entropy(features: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of softmax over each feature vector (B, D) -> (B,)."""
    return entropy_from_log_probs(F.log_softmax(features.float(), dim=-1))


def low_entropy_samples(model: nn.Module, x: torch.Tensor, *, eps: float, norm: str, steps: int, step: float,
                        clamp: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
    """x plus a perturbation of the ``norm`` ball of radius eps (pixel units) that lowers
    ``feature_entropy(model.features(.))``: a uniformly random start, then ``steps`` steps of size
    ``step`` along the descent direction (sign of the gradient for L-inf), each projected to the
    ball. With ``clamp`` the images stay in [0, 1]; without, x + delta as the published code.
    Runs ``model`` in whatever mode it is in (the caller picks BatchNorm's); returns detached images."""
    if norm == "linf":
        where = generator.device if generator is not None else torch.device("cpu")
        delta = ((torch.rand(x.shape, generator=generator, device=where) * 2 - 1) * eps).to(x.device)
    else:
        delta = random_uap(tuple(x.shape), eps, norm, generator).to(x.device)
    add = perturb if clamp else torch.add
    for _ in range(steps):
        delta.requires_grad_(True)
        h = feature_entropy(model.features(add(x, delta))).mean()
        grad, = torch.autograd.grad(h, delta)
        delta = project(delta.detach() - step * ascent(grad, norm), eps, norm)
    return add(x, delta).detach()


class EntropyDT(Step):
    """The published method's per-batch step; its schedule and repair set come from its Config
    fields (``repair_*``, ``ent_*``), its starting weights from ``base``."""

    def __init__(self, model: nn.Module, cfg: Config, device: torch.device):
        super().__init__(model, cfg, device)
        self.generator = torch.Generator(device=device).manual_seed(cfg.seed + 2)  # random starts, on the device
        self.leak: torch.Tensor | None = None

    @staticmethod
    def schedule(cfg: Config) -> Schedule:
        turn = cfg.repair_epochs
        drop = cfg.repair_clean_lr / cfg.repair_lr
        total_epochs = cfg.repair_epochs + cfg.repair_clean_epochs
        return Schedule(total_epochs, cfg.repair_batch_size, cfg.repair_lr, 0.0, False,
                        lambda step, total: 1.0 if step * total_epochs < turn * total else drop, cfg.repair_rotation)

    @staticmethod
    def training_images(cfg: Config, split: Split) -> Split:
        """The repair set: ``repair_size`` class-balanced images of the training split, drawn with the run's seed."""
        if cfg.repair_size > len(split):
            raise ValueError(f"repair_size={cfg.repair_size} is more than the {len(split)} training images; lower it.")
        if cfg.repair_size % split.classes:
            raise ValueError(f"repair_size={cfg.repair_size} must be a multiple of the {split.classes} classes to stay class-balanced.")
        return split.subset(balanced_indices(split.y.cpu().numpy(), cfg.repair_size // split.classes, cfg.seed,
                                             classes=split.classes))

    @staticmethod
    def base(cfg: Config) -> tuple[Config, bool]:
        """The standard run of the same settings (this method's own fields at their defaults), and
        whether its evaluation UAPs are needed (``ent_leak``)."""
        defaults = {f: Config.__dataclass_fields__[f].default for f in METHOD_FIELDS["entropy_dt"]}
        return cfg.replace(method="standard", **defaults), cfg.ent_leak

    def begin(self, uaps: dict[str, torch.Tensor] | None) -> None:
        """The leaked perturbation: the standard run's targeted UAP where its evaluation is targeted
        (as the published code leaks the UAP it tests with), else the one that won the fooling rate."""
        if self.cfg.ent_leak:
            self.leak = uaps.get("head0/targeted", uaps["head0"]).to(self.device)

    def start_epoch(self, epoch: int, opt: torch.optim.Optimizer, fresh: bool = True) -> None:
        super().start_epoch(epoch, opt, fresh)
        if epoch == self.cfg.repair_epochs and fresh:  # the clean passes: a new optimizer, as the published second run
            opt.state.clear()

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.cfg
        if self.epoch >= c.repair_epochs or c.ent_alpha == 0:  # the clean passes, or the control's whole fine-tune
            logits = self.model(x)
            self.parts = {}
            return heads_cross_entropy(logits, y), logits
        net = attack_module(self.model)
        net.train(c.ent_bn == "train")
        with self.clock.phase("low_entropy"):
            low = low_entropy_samples(net, x, eps=c.eps, norm=c.norm, steps=c.ent_steps, step=c.ent_step * c.eps,
                                      clamp=c.ent_clamp, generator=self.generator)
        net.train()
        if self.leak is not None:  # forward only: BatchNorm's running statistics see the evaluation UAP
            with torch.no_grad():
                self.model(perturb(x, self.leak) if c.ent_clamp else x + self.leak)
        clean, adv = self.model(x), self.model(low)
        ce, ce_low = heads_cross_entropy(clean, y), heads_cross_entropy(adv, y)
        self.parts = {"ce": ce.detach(), "ce_low": ce_low.detach()}
        return (1 - c.ent_alpha) * ce + c.ent_alpha * ce_low, clean

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
