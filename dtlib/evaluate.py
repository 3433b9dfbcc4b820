"""Metrics of docs/protocol.md section 3 and the evaluation of a trained model under SGD-UAP.

- accuracy: fraction of images whose prediction equals the label;
- fooling rate: fraction of images whose prediction changes when the UAP is added;
- accuracy under UAP: accuracy on x + UAP;
- targeted success: fraction predicted as the target among images not of the target class.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .attacks import ScoresFn, perturb, random_uap, sgd_uap
from .config import Config
from .data import CLASSES, Split, balanced_indices, check_images, to_float
from .models import MultiHead


@torch.no_grad()
def predict(scores_fn: ScoresFn, images: torch.Tensor, *, delta: torch.Tensor | None = None,
            batch_size: int = 500, amp_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Predicted labels (N,) on the CPU for images (uint8 or [0, 1] floats), optionally plus ``delta``."""
    check_images(images, "images to predict")
    out = []
    for b in range(0, len(images), batch_size):
        x = to_float(images[b:b + batch_size])
        if delta is not None:
            x = perturb(x, delta)
        with torch.autocast(x.device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
            out.append(scores_fn(x).argmax(-1).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def accuracy(pred: torch.Tensor, labels: torch.Tensor) -> float:
    return (pred == labels.cpu()).float().mean().item()


def fooling_rate(clean_pred: torch.Tensor, adv_pred: torch.Tensor) -> float:
    return (clean_pred != adv_pred).float().mean().item()


def targeted_success(adv_pred: torch.Tensor, labels: torch.Tensor, target: int) -> float:
    keep = labels.cpu() != target
    return (adv_pred[keep] == target).float().mean().item() if keep.any() else float("nan")


def fit_images(train: Split, n: int, seed: int) -> Split:
    """The first ``n`` training images of a seeded permutation: what evaluation UAPs are fitted on."""
    order = np.random.default_rng(seed).permutation(len(train))[:n]
    return train.subset(order)


def scored_subset(split: Split, n: int) -> Split:
    """A class-balanced subset of ``n`` images (0 = all), the same for every model. CIFAR-10 files
    may be stored sorted by class, so the first ``n`` images would be a few classes only."""
    if not n or n >= len(split):
        return split
    return split.subset(balanced_indices(split.y.numpy(), n // len(CLASSES), seed=0))


def evaluate_model(model: MultiHead, cfg: Config, train: Split, test: Split,
                   amp_dtype: torch.dtype | None = None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Clean accuracy, and fooling rate / accuracy under an SGD-UAP fitted (on ``train`` images)
    against each inference mode in ``cfg.modes``, plus the random-sign floor of the same norm.
    ``test`` is what is scored: the test split, or the validation split when selecting settings.

    Returns ``({mode: metrics}, {mode: uap})``; a one-head model is scored once, as ``single``."""
    model.eval()
    modes = ["single"] if model.heads == 1 else cfg.modes
    fit = fit_images(train, cfg.uap_fit_size, cfg.seed)
    test = scored_subset(test, cfg.eval_size)
    rows, uaps = {}, {}
    for mode in modes:
        fn = lambda x, mode=mode: model.scores(x, mode, cfg.eval_head)
        clean = predict(fn, test.x, amp_dtype=amp_dtype)
        uap = sgd_uap(fn, fit.x, fit.y, eps=cfg.eval_eps, norm=cfg.eval_norm, epochs=cfg.uap_epochs,
                      lr=cfg.uap_lrs, decay=cfg.uap_decay, restarts=cfg.uap_restarts, seed=cfg.seed,
                      amp_dtype=amp_dtype)
        adv = predict(fn, test.x, delta=uap, amp_dtype=amp_dtype)
        rnd = random_uap(tuple(uap.shape), cfg.eval_eps, cfg.eval_norm,
                         torch.Generator().manual_seed(cfg.seed)).to(uap.device)
        rnd_pred = predict(fn, test.x, delta=rnd, amp_dtype=amp_dtype)
        key = mode if mode == "ensemble" else f"head{cfg.eval_head}"
        rows[key] = {
            "mode": mode, "head": cfg.eval_head if mode == "single" else None,
            "clean_acc": accuracy(clean, test.y),
            "fooling_rate": fooling_rate(clean, adv),
            "uap_acc": accuracy(adv, test.y),
            "random_fooling_rate": fooling_rate(clean, rnd_pred),
            "random_acc": accuracy(rnd_pred, test.y),
            "uap_linf": uap.abs().max().item(), "uap_l2": uap.norm().item(),
            "n_test": len(test), "n_fit": len(fit),
        }
        uaps[key] = uap.cpu()
    return rows, uaps
