"""The names a setting may take (methods, backbones, norms, ...) and the radius check: the
vocabulary every module shares, re-exported by ``config``. Radii are in pixel units (images in [0, 1])."""
from __future__ import annotations

import math

METHODS, BACKBONES, NORMS = ("standard", "dt", "pgd_at", "uat", "entropy_dt"), ("cnn", "vgg", "resnet18", "resnet50"), ("linf", "l2")
DATASETS, DEVICES, PRECISIONS = ("full", "mini", "imagenet"), ("auto", "cpu", "cuda"), ("auto", "bf16", "fp32")
MODES = ("ensemble", "single")
ATTACK_OBJECTIVES = ("ensemble_ce", "heads_ce", "mean_logit")
ATTACK_LABELS = ("predicted", "true")
EVAL_SPLITS = ("test", "val")
UAP_OBJECTIVES = ("ensemble_ce", "loss")
BN_MODES = ("eval", "train")


# The largest L2 distance between two 3x32x32 images in [0, 1]: no L2 radius beyond it means anything.
L2_MAX = math.sqrt(3 * 32 * 32)


def check_radius(name: str, value: float, norm: str, side: int = 32) -> None:
    """An L-inf radius lies in [0, 1]; an L2 radius in [0, the largest L2 distance between two
    3 x side x side images] (L2_MAX for CIFAR-10's 32; pixel units)."""
    top = 1.0 if norm == "linf" else math.sqrt(3 * side * side)
    if not 0 <= value <= top:
        hint = "10/255 = 0.0392" if norm == "linf" else "an L-inf 10/255 perturbation has L2 norm 2.17"
        raise ValueError(f"{name}={value} is outside [0, {top:.4g}] for the {norm} norm (pixel units; {hint}).")
