"""The evaluation of a trained model under SGD-UAP (docs/protocol.md section 3): which images fit
the UAP and which are scored, and the metrics (``metrics``) of every inference mode."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .attacks import random_uap, sgd_uap
from .config import Config
from .data import CLASSES, Split, balanced_indices
from .metrics import accuracy, fooling_rate, predict
from .models import MultiHead


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
