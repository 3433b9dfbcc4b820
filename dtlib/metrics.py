"""The metrics of docs/protocol.md section 3, from predicted labels; and ``predict``, which makes them.

- accuracy: fraction of images whose prediction equals the label;
- fooling rate: fraction of images whose prediction changes when the UAP is added;
- accuracy under UAP: accuracy on x + UAP;
- targeted success: fraction predicted as the target among images not of the target class.
"""
from __future__ import annotations

from typing import Callable

import torch

from .data import check_images, to_float

ScoresFn = Callable[[torch.Tensor], torch.Tensor]


def perturb(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """x + delta, clamped to valid pixels [0, 1]."""
    return (x + delta).clamp(0, 1)


@torch.no_grad()
def predict(scores_fn: ScoresFn, images: torch.Tensor, *, delta: torch.Tensor | None = None,
            batch_size: int = 256, amp_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Predicted labels (N,) on the CPU for images (uint8 or [0, 1] floats), optionally plus ``delta``.
    Batches of 256: on 2 CPU cores 500 was about half as fast (activations outgrow the caches)."""
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


def attack_success_rate(clean_pred: torch.Tensor, adv_pred: torch.Tensor, labels: torch.Tensor) -> float:
    """The published paper's attack success rate: among images classified right when clean, the
    share classified wrong under the perturbation (NaN when none is right)."""
    right = clean_pred == labels.cpu()
    return (adv_pred[right] != labels.cpu()[right]).float().mean().item() if right.any() else float("nan")


def targeted_success(adv_pred: torch.Tensor, labels: torch.Tensor, target: int) -> float:
    keep = labels.cpu() != target
    return (adv_pred[keep] == target).float().mean().item() if keep.any() else float("nan")
