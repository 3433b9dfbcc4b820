"""The checks of a ``config.Config``: ``validate`` raises ValueError, in one sentence naming the bad
value, for a setting no run could use. Radii and steps are in pixel units (images in [0, 1])."""
from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

from .choices import (ATTACK_LABELS, ATTACK_OBJECTIVES, BACKBONES, BN_MODES, DATASETS, DEVICES, EVAL_SPLITS, METHODS,
                      MODES, NORMS, PRECISIONS, UAP_OBJECTIVES, check_radius)
from .parsing import kind_name

NATIVE_SIDE = 224  # an ImageFolder's crops when image_size is 0 (imagenet.NATIVE_SIZE)
DEFAULT_WORKERS = 4  # Config.workers's default


def validate(cfg: Any) -> None:
    """Raise ValueError (one sentence naming the bad value) for a config no run could use."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        kind = type(f.default)
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            raise ValueError(f"Config field {f.name}={value!r} must be {kind_name(kind)}.")
        if kind is float and not math.isfinite(value):
            raise ValueError(f"Config field {f.name}={value!r} must be a finite number.")
    choices = {"method": METHODS, "backbone": BACKBONES, "norm": NORMS, "eval_norm": NORMS,
               "data": DATASETS, "device": DEVICES, "precision": PRECISIONS, "eval_split": EVAL_SPLITS,
               "uap_objective": UAP_OBJECTIVES, "ent_bn": BN_MODES}
    for name, allowed in choices.items():
        if getattr(cfg, name) not in allowed:
            raise ValueError(f"Unknown {name} {getattr(cfg, name)!r}; choose one of {', '.join(allowed)}.")
    if cfg.method != "dt" and (cfg.uap_every, cfg.uap_objective, cfg.uap_fraction) != (1, "ensemble_ce", 1.0):
        raise ValueError(f"uap_every={cfg.uap_every}, uap_objective={cfg.uap_objective!r}, uap_fraction={cfg.uap_fraction}: "
                         f"dt's, not read by method={cfg.method!r}.")
    if cfg.method != "dt" and cfg.perturbed_fraction != 1.0:
        raise ValueError(f"perturbed_fraction={cfg.perturbed_fraction}: dt's, not read by method={cfg.method!r}.")
    if not 0 < cfg.perturbed_fraction <= 1:
        raise ValueError(f"perturbed_fraction must be a fraction in (0, 1], got {cfg.perturbed_fraction}.")
    if not 0 < cfg.uap_fraction <= 1:
        raise ValueError(f"uap_fraction must be a fraction in (0, 1], got {cfg.uap_fraction}.")
    if cfg.uap_fraction < 1 and cfg.uap_objective != "ensemble_ce":
        raise ValueError(f"uap_fraction={cfg.uap_fraction} sets ensemble_ce's gradient pass; uap_objective="
                         f"{cfg.uap_objective!r} takes its gradient from the whole step (leave it 1).")
    for mode in cfg.modes or [""]:
        if mode not in MODES:
            raise ValueError(f"Unknown inference mode {mode!r} in eval_modes; choose from {', '.join(MODES)}.")
    for name, values, allowed in (("eval_objectives", cfg.uap_objective_list, ATTACK_OBJECTIVES),
                                  ("eval_labels", cfg.uap_label_list, ATTACK_LABELS)):
        if not values or any(v not in allowed for v in values):
            raise ValueError(f"{name}={getattr(cfg, name)!r} must list one or more of {', '.join(allowed)}.")
    if cfg.heads < 1:
        raise ValueError(f"heads (K) must be at least 1, got {cfg.heads}.")
    if not 0 <= cfg.eval_head < cfg.heads:
        raise ValueError(f"eval_head {cfg.eval_head} is out of range for a model with {cfg.heads} heads.")
    _check_data(cfg)
    side = (cfg.image_size or NATIVE_SIDE) if cfg.data == "imagenet" else 32
    for name, norm in (("eps", cfg.norm), ("uap_step", cfg.norm), ("eval_eps", cfg.eval_norm),
                       ("pgd_eps", "linf"), ("pgd_alpha", "linf")):
        check_radius(name, getattr(cfg, name), norm, side)
    try:
        lrs = cfg.uap_lrs
    except ValueError:
        raise ValueError(f"uap_lr={cfg.uap_lr!r} is not a number or a comma-separated list of numbers.") from None
    if not lrs or not all(math.isfinite(v) and v > 0 for v in lrs):
        raise ValueError(f"uap_lr={cfg.uap_lr!r} must be one or more positive numbers.")
    for name in ("lambda_cons", "lambda_div", "lambda_adv", "weight_decay"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"{name} must be non-negative, got {getattr(cfg, name)}.")
    if cfg.batch_size < 2:
        raise ValueError(f"batch_size must be at least 2 (BatchNorm needs two images per batch to train), got {cfg.batch_size}.")
    if not -1 <= cfg.eval_target < (10 if cfg.data != "imagenet" else math.inf):  # an ImageFolder's: at evaluation
        raise ValueError(f"eval_target={cfg.eval_target} must be a class index 0..9, or -1 for untargeted UAPs.")
    for name in ("lr", "repair_lr", "repair_clean_lr", "ent_step", "uap_adam_lr"):
        if not getattr(cfg, name) > 0:
            raise ValueError(f"{name} must be positive, got {getattr(cfg, name)}.")
    if not 0 <= cfg.ent_alpha <= 1:
        raise ValueError(f"ent_alpha must be a weight in [0, 1], got {cfg.ent_alpha}.")
    if cfg.ent_alpha == 0 and cfg.ent_leak and cfg.method == "entropy_dt":
        raise ValueError("ent_leak=True has no effect with ent_alpha=0 (the clean fine-tune control makes no sample and leaks nothing); drop one.")
    if not 0 <= cfg.repair_rotation <= 180:
        raise ValueError(f"repair_rotation must be in [0, 180] degrees, got {cfg.repair_rotation}.")
    if cfg.repair_batch_size < 2:
        raise ValueError(f"repair_batch_size must be at least 2 (BatchNorm needs two images per batch), got {cfg.repair_batch_size}.")
    if cfg.repair_size % 10 and cfg.data != "imagenet":
        raise ValueError(f"repair_size={cfg.repair_size} must be a multiple of 10 to stay class-balanced.")
    for name in ("epochs", "repair_size", "repair_epochs", "ent_steps", "uap_epochs", "uap_restarts", "uap_fit_size",
                 "uap_window", "uap_patience", "uap_every", "nproc"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be at least 1, got {getattr(cfg, name)}.")
    for name in ("pgd_steps", "repair_clean_epochs", "train_size", "val_size", "eval_size", "uap_refine"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"{name} must be non-negative, got {getattr(cfg, name)}.")
    if cfg.eval_split == "val" and not cfg.val_size:
        raise ValueError("eval_split='val' scores on the validation split, but val_size=0 holds none out; set val_size.")
    if cfg.eval_size % 10 and cfg.data != "imagenet":
        raise ValueError(f"eval_size={cfg.eval_size} must be a multiple of 10 to stay class-balanced.")
    if not 0 <= cfg.seed < 2**31:
        raise ValueError(f"seed must be in [0, 2**31), got {cfg.seed}.")
    if cfg.sync_bn and (cfg.nproc == 1 or cfg.device == "cpu"):
        raise ValueError(f"sync_bn=true needs nproc > 1 on CUDA, got nproc={cfg.nproc} and device={cfg.device!r}.")
    if cfg.pretrained and cfg.backbone != "resnet50":
        raise ValueError(f"pretrained={cfg.pretrained!r} holds ResNet-50 weights, but backbone={cfg.backbone!r}; use resnet50.")
    if cfg.compile and cfg.checkpointing:
        raise ValueError("compile=true cannot be combined with checkpointing=true (torch.compile does not trace the "
                         "checkpoint's BatchNorm guard); choose one.")
    if not cfg.checkpoint_minutes > 0:
        raise ValueError(f"checkpoint_minutes must be positive, got {cfg.checkpoint_minutes}.")
    if not 0 <= cfg.warmup < 1:
        raise ValueError(f"warmup must be a fraction in [0, 1), got {cfg.warmup}.")
    if not 0 <= cfg.uap_tol < 1:
        raise ValueError(f"uap_tol must be a rate in [0, 1), got {cfg.uap_tol}.")
    if not 0 < cfg.uap_decay <= 1:
        raise ValueError(f"uap_decay must be in (0, 1], got {cfg.uap_decay}.")


def _check_data(cfg: Any) -> None:
    """The settings that only an ImageFolder (data=imagenet) reads, and what it cannot take."""
    if cfg.data != "imagenet":
        if cfg.image_size:
            raise ValueError(f"image_size={cfg.image_size} sets the crops of data=imagenet; CIFAR-10's images are 32x32 "
                             "(leave it 0).")
        if cfg.workers != DEFAULT_WORKERS:
            raise ValueError(f"workers={cfg.workers} sets the image decoders of data=imagenet; CIFAR-10 is held in memory "
                             f"(leave it {DEFAULT_WORKERS}).")
        return
    if cfg.image_size and cfg.image_size < 16:
        raise ValueError(f"image_size={cfg.image_size} is too small for a backbone to pool; use 16 or more (0 = 224).")
    if cfg.workers < 0:
        raise ValueError(f"workers must be non-negative, got {cfg.workers}.")
    if cfg.backbone == "vgg":
        raise ValueError("backbone='vgg' takes 32x32 images only (its classifier reads a 1x1 map); use cnn, resnet18 or "
                         "resnet50 with data=imagenet.")
    if cfg.download:
        raise ValueError("download=true fetches CIFAR-10 only; ImageNet is placed in data_dir by hand (train/ and val/).")
