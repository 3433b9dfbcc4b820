"""The evaluation of a trained model (docs/protocol.md section 3): which images fit the UAPs and
which are scored, and the attack suite's metrics (``suite``) for every inference mode."""
from __future__ import annotations

import pickle
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from .attacks import frozen_for_attack, in_layout, random_uap
from .checkpoint import state_digest
from .config import Config
from .data import DataError, FolderSplit, Split, balanced_indices, file_digest, in_memory, load_data
from .io import write_json
from .lazy import factory_from
from .metrics import accuracy, fooling_rate, predict
from .models import MultiHead
from .runtime import amp_dtype, provenance, resolve_device
from .suite import Suite, attack, mode_fns


def fit_indices(n_pool: int, n: int, seed: int) -> np.ndarray:
    """Which of a pool of ``n_pool`` training images evaluation UAPs are fitted on: the first ``n`` of a seeded permutation."""
    return np.random.default_rng(seed).permutation(n_pool)[:n]


def fit_images(pool: Split | FolderSplit, n: int, seed: int) -> Split:
    """The training images evaluation UAPs are fitted on (``fit_indices`` of ``data.fitting_pool``), in memory."""
    return in_memory(pool.subset(fit_indices(len(pool), n, seed)))


def scored_choice(split: Split | FolderSplit, n: int) -> Split | FolderSplit:
    """A class-balanced subset of ``n`` images (0 = all), the same for every model. CIFAR-10 files
    may be stored sorted by class, so the first ``n`` images would be a few classes only."""
    if not n or n >= len(split):
        return split
    if n % split.classes:
        raise DataError(f"eval_size={n} must be a multiple of the {split.classes} classes to stay class-balanced.")
    return split.subset(balanced_indices(split.y.cpu().numpy(), n // split.classes, seed=0, classes=split.classes))


def scored_subset(split: Split | FolderSplit, n: int) -> Split:
    """``scored_choice`` in memory: what is scored."""
    return in_memory(scored_choice(split, n))


def check_scored(cfg: Config, scored: Split | FolderSplit) -> None:
    """Refuse, in one sentence, an evaluation the scored images cannot take (a target class the data
    lacks, an eval_size that is not class-balanced): ``run`` calls it before any training."""
    if cfg.eval_target >= scored.classes:
        raise ValueError(f"eval_target={cfg.eval_target} is not a class of the data (0..{scored.classes - 1}).")
    scored_choice(scored, cfg.eval_size)


def evaluate_model(model: nn.Module, cfg: Config, pool: Split | FolderSplit, test: Split | FolderSplit, amp_dtype: torch.dtype | None = None,
                   journal: Path | None = None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Clean accuracy, and the fooling rate / accuracy under UAP of the attack suite (``suite``:
    the strongest of its SGD-UAPs, fitted on ``cfg.uap_fit_size`` images of ``pool``, the training
    images outside the validation split (``data.fitting_pool``), against each inference mode in
    ``cfg.modes``, and its untuned patterns), plus the random-sign floor of the same norm.
    ``test`` is what is scored: the test split, or the validation split when selecting settings.
    ``model``: a MultiHead, or any module mapping images in [0, 1] to logits (scored as ``single``).

    Returns ``({mode: metrics}, {mode: uap})``: the UAP that won the fooling rate under the mode's
    key, the one that won accuracy under ``<mode>/uap_acc``; a one-head model is scored once, as
    ``single``. The model is scored in eval mode (``frozen_for_attack``) and left as it was.
    ``journal``: where each mode's suite keeps its finished fits (``journal_files``), so a killed
    evaluation started again goes on from them."""
    modes = cfg.modes if isinstance(model, MultiHead) and model.heads > 1 else ["single"]
    identity = {"weights": state_digest(model.state_dict()), "device": pool.device.type} if journal else None
    check_scored(cfg, test)
    fit, test = pool.subset(fit_indices(len(pool), cfg.uap_fit_size, cfg.seed)), scored_choice(test, cfg.eval_size)
    # an ImageFolder's images are recorded by a digest of their names, in the order used
    files = {"fit_files": fit.listing(), "scored_files": test.listing()} if isinstance(fit, FolderSplit) else {}
    fit, test = in_memory(fit), in_memory(test)
    with frozen_for_attack(model):
        fit, test = Split(in_layout(fit.x, model), fit.y, fit.classes), Split(in_layout(test.x, model), test.y, test.classes)
        rows, uaps = _evaluate(model, cfg, modes, fit, test, amp_dtype, journal, identity)
    return {key: {**row, **files} for key, row in rows.items()}, uaps


def journal_file(journal: Path, mode: str) -> Path:
    """The file of ``mode``'s suite under the prefix ``journal``: ``<journal>-<mode>.pt``."""
    return journal.with_name(f"{journal.name}-{mode}.pt")


def _evaluate(model: nn.Module, cfg: Config, modes: list[str], fit: Split, test: Split,
              amp_dtype: torch.dtype | None, journal: Path | None,
              identity: Any = None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    rows, uaps = {}, {}
    for mode in modes:
        parts, fn = mode_fns(model, mode, cfg.eval_head)
        found, won = attack(parts, fn, fit, test, Suite.from_config(cfg), amp_dtype=amp_dtype,
                            journal=journal_file(journal, mode) if journal else None, identity=identity)
        uap = won["fooling"]
        clean = predict(fn, test.x, amp_dtype=amp_dtype)
        rnd = random_uap(tuple(uap.shape), cfg.eval_eps, cfg.eval_norm,
                         torch.Generator().manual_seed(cfg.seed)).to(test.x.device)
        rnd_pred = predict(fn, test.x, delta=rnd, amp_dtype=amp_dtype)
        key = mode if mode == "ensemble" else f"head{cfg.eval_head}"
        rows[key] = {
            "mode": mode, "head": cfg.eval_head if mode == "single" else None,
            "clean_acc": found["clean_acc"], "fooling_rate": found["fooling_rate"], "uap_acc": found["uap_acc"],
            "random_fooling_rate": fooling_rate(clean, rnd_pred), "random_acc": accuracy(rnd_pred, test.y),
            "fooling_by": found["fooling_by"], "uap_acc_by": found["uap_acc_by"], "asr": found["asr"],
            **{k: found[k] for k in ("target", "targeted_success", "targeted_by") if k in found},
            "converged": found["converged"],
            "uap_linf": uap.abs().max().item(), "uap_l2": uap.norm().item(),
            "n_test": len(test), "n_fit": len(fit), "attack": found["entries"],
        }
        uaps[key], uaps[f"{key}/uap_acc"] = uap, won["uap_acc"]
        if "targeted_success" in won:
            uaps[f"{key}/targeted"] = won["targeted_success"]
    return rows, uaps


def attack_outside(spec: str, weights: str | Path, cfg: Config, out: str | Path | None = None,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    """The attack suite on a model of one's own: ``spec`` = ``package.module:factory`` (a callable
    returning a module that maps images (B, 3, H, W) in [0, 1] to logits), ``weights`` its state
    dict (``torch.save``), data and attack settings from ``cfg`` (Config fields). Writes the same
    metrics record as the study's evaluations to ``out`` (default ``attack-<weights name>.json``)."""
    device = resolve_device(cfg.device)
    model = factory_from(spec)()
    try:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except (OSError, RuntimeError, pickle.UnpicklingError) as e:
        raise ValueError(f"The weights {weights} do not load into {spec}() ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200]}).") from None
    model = model.to(device)
    pool, val, test = load_data(cfg.replace(train_size=0))  # pool = data.fitting_pool(cfg), in the same load
    scored = val if cfg.eval_split == "val" else test
    log(f"attacking {spec} with {weights}: suite of SGD-UAPs {cfg.eval_norm} eps {cfg.eval_eps:.4f} on the "
        f"{cfg.eval_split} split")
    t0 = time.perf_counter()
    rows, _ = evaluate_model(model, cfg, pool.to(device), scored.to(device), amp_dtype(cfg.precision, device))
    record = {"model": spec, "weights": str(weights), "weights_sha256": file_digest(Path(weights)),
              "config": cfg.group("eval") | {k: getattr(cfg, k) for k in ("data", "image_size", "train_size", "val_size", "seed")},
              "eval": rows, "eval_wall_s": time.perf_counter() - t0, "provenance": provenance(device)}
    write_json(Path(out) if out else Path(f"attack-{Path(weights).stem}.json"), record)
    return record
