"""The evaluation attack: a suite of universal perturbations against one model and inference mode,
and the strongest entry reported for each metric (docs/protocol.md section 3).

A weak attack makes every defense look good, so the fooling rate reported is the maximum, and the
accuracy under UAP the minimum, over:
- SGD-UAPs (``attacks.fit_uap``, fitted until the fitting-set rate stops rising) for every attacker
  objective aimed at the model's parts (``OBJECTIVES``), both kinds of labels (the model's own clean
  predictions, which is what the fooling rate counts, and the true labels, what accuracy counts),
  every step size and restart, and ``refine`` more random starts of the best of them per kind;
- untuned universal patterns as floors (checkerboards, random signs, per-channel shifts);
- UAPs fitted on other models (``candidates``: transfer is never stronger than what is reported).
Every entry's rates are kept, with the name of the entry that won. Pixels in [0, 1]; eps in pixel units.
A suite against one model is an hour or more of fitting on 2 CPU cores, so with a ``journal`` file
each finished fit is saved as it ends, and a killed suite started again with the same settings
takes the fits it finds there and goes on from the next, with the same random draws.

With a ``target`` class the SGD-UAPs send images to it instead (minus each objective's
cross-entropy to the target, ascended), and the published paper's own attack joins them: Adam on
its bounded-logit loss; the targeted success rate is reported as the maximum over the entries.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from itertools import product
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attacks import _check, _l2, fit_uap, frozen_for_attack, in_layout, random_uap, restart_point, steps_per_pass
from .checkpoint import CorruptFile, load_verified, save_verified, state_digest
from .config import ATTACK_LABELS, ATTACK_OBJECTIVES, Config
from .data import Split, to_float
from .metrics import ScoresFn, accuracy, attack_success_rate, fooling_rate, predict, targeted_success
from .models import MultiHead, ensemble_log_probs

PartsFn = Callable[[torch.Tensor], torch.Tensor]  # images -> (K, B, classes) logits of the attacked parts
# What an SGD-UAP ascends on the parts' logits: the ensemble's cross-entropy (log of the mean of
# the softmaxes), the mean of each part's cross-entropy, the cross-entropy of the mean logit. With
# one part they are one objective, "ce".
OBJECTIVES, LABELS = ATTACK_OBJECTIVES, ATTACK_LABELS
MONITOR_IMAGES = 2000  # fitting images the stopping rule reads (a fixed subset: differences are not noise)


@dataclass(frozen=True)
class Suite:
    """The suite's settings (``from_config`` reads them from a Config's eval fields)."""
    eps: float
    norm: str = "linf"
    lrs: tuple[float, ...] = (0.1, 0.25)          # constant steps, fractions of eps
    restarts: int = 1                             # restart 0 starts at zero, later ones at a random point
    refine: int = 3                               # random-start fits added to the best setting per kind of labels
    max_epochs: int = 10                          # the cap: passes over the fitting images
    decay: float = 1.0                            # step multiplier per pass
    window: int = 20                              # steps between readings of the stopping rule
    tol: float = 0.005                            # ... which stops once the best rate rose by at most this
    patience: int = 3                             # ... in this many readings in a row
    objectives: tuple[str, ...] = OBJECTIVES
    labels: tuple[str, ...] = LABELS
    batch_size: int = 128
    beta: float = 12.0                            # per-example cross-entropy clamp
    seed: int = 0
    target: int | None = None                     # a class: targeted UAPs (else untargeted)
    adam_lr: float = 0.005                        # targeted: the published attack's Adam learning rate
    confidence: float = 10.0                      # ... and its bounded-logit margin

    @classmethod
    def from_config(cls, cfg: Config) -> "Suite":
        return cls(eps=cfg.eval_eps, norm=cfg.eval_norm, lrs=tuple(cfg.uap_lrs), restarts=cfg.uap_restarts,
                   refine=cfg.uap_refine,
                   max_epochs=cfg.uap_epochs, decay=cfg.uap_decay, window=cfg.uap_window, tol=cfg.uap_tol,
                   patience=cfg.uap_patience,
                   objectives=tuple(cfg.uap_objective_list), labels=tuple(cfg.uap_label_list), seed=cfg.seed,
                   target=cfg.eval_target if cfg.eval_target >= 0 else None, adam_lr=cfg.uap_adam_lr)


def objective_loss(parts: torch.Tensor, labels: torch.Tensor, objective: str, beta: float = 12.0) -> torch.Tensor:
    """The mean per-example cross-entropy, clamped at ``beta``, of ``objective`` on (K, B, C) logits
    (``heads_ce``: each head's cross-entropy clamped, then averaged, so a head already fooled stops
    pulling the perturbation)."""
    parts = parts.float()
    if objective == "heads_ce":
        k, b, c = parts.shape
        ce = F.cross_entropy(parts.reshape(k * b, c), labels.repeat(k), reduction="none").view(k, b)
        ce = ce.clamp(max=beta).mean(0)
    elif objective in ("ensemble_ce", "ce"):
        ce = F.nll_loss(ensemble_log_probs(parts), labels, reduction="none")
    elif objective == "mean_logit":
        ce = F.cross_entropy(parts.mean(0), labels, reduction="none")
    else:
        raise ValueError(f"Unknown attacker objective {objective!r}; choose from {', '.join(OBJECTIVES)}.")
    return ce.clamp(max=beta).mean()


def targeted_loss(parts: torch.Tensor, target: torch.Tensor, objective: str, confidence: float = 10.0) -> torch.Tensor:
    """What a targeted fit ascends on (K, B, C) logits: minus ``objective``'s cross-entropy to the
    ``target`` labels, or for ``bounded_logit`` (the published attack) minus the mean of
    max(best other score - target score, -confidence), the best other score held fixed (on the
    ensemble's log-probabilities, whose differences are the logits' for one head)."""
    if objective != "bounded_logit":
        return -objective_loss(parts, target, objective, beta=float("inf"))
    scores = ensemble_log_probs(parts)
    mine = scores.gather(1, target[:, None]).squeeze(1)
    other = scores.scatter(1, target[:, None], float("-inf")).amax(1).detach()
    return -(other - mine).clamp(min=-confidence).mean()


def patterns(shape: tuple[int, ...], eps: float, norm: str = "linf", seed: int = 0) -> dict[str, torch.Tensor]:
    """Untuned universal perturbations of radius eps, shape (1, C, H, W): checkerboards of cells 1,
    2, 4 and 8 pixels (both signs), two random sign patterns, and every per-channel constant shift
    (+-eps per channel). L2: the same directions scaled to L2 norm eps."""
    _check(eps, norm)
    c, h, w = shape
    out = {}
    for cell in (1, 2, 4, 8):
        board = ((torch.arange(h) // cell)[:, None] + (torch.arange(w) // cell)[None, :]) % 2 * 2.0 - 1
        out[f"checkerboard{cell}"] = board.expand(1, c, h, w)
        out[f"checkerboard{cell}-"] = -board.expand(1, c, h, w)
    g = torch.Generator().manual_seed(seed + 7919)  # not the random floor's draw (random_fooling_rate)
    for i in range(2):
        out[f"random_signs{i}"] = random_uap((1, c, h, w), 1.0, "linf", g)
    for signs in product((1.0, -1.0), repeat=c):
        name = "shift" + "".join("+" if s > 0 else "-" for s in signs)
        out[name] = torch.tensor(signs).view(1, c, 1, 1).expand(1, c, h, w)
    if norm == "linf":
        return {k: eps * v.contiguous() for k, v in out.items()}
    return {k: v * (eps / _l2(v)) for k, v in out.items()}


def attack(parts_fn: PartsFn, scores_fn: ScoresFn, fit: Split, test: Split, suite: Suite, *,
           candidates: dict[str, torch.Tensor] | None = None, amp_dtype: torch.dtype | None = None,
           journal: str | Path | None = None, identity: Any = None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Run the suite against one inference mode: ``scores_fn`` gives its (B, C) scores, ``parts_fn``
    the (K, B, C) logits of its parts (heads; K = 1 for one head or any plain model). UAPs are fitted
    on ``fit`` (training images) and scored on ``test``; ``candidates`` are UAPs from elsewhere.
    ``journal``: a file that keeps the finished fits, read back by a later call with the same suite,
    fitting images, model predictions on them, precision and ``identity`` (what the caller knows of
    the model: its weights' digest, the device); the caller removes it once the results are saved.

    Returns (metrics, UAPs): metrics hold clean accuracy, ``fooling_rate`` (the maximum over the
    entries, won by ``fooling_by``), ``uap_acc`` (the minimum, ``uap_acc_by``) and every entry's rates
    and fit record under ``entries``; the UAPs are the two winners, ``fooling`` and ``uap_acc``."""
    device = fit.x.device
    with torch.no_grad():
        k = parts_fn(to_float(fit.x[:2])).shape[0]
    objectives = tuple(dict.fromkeys(suite.objectives)) if k > 1 else ("ce",)
    t = suite.target
    kinds = ("target",) if t is not None else suite.labels
    clean_fit = predict(scores_fn, fit.x, amp_dtype=amp_dtype).to(device)
    clean_test = predict(scores_fn, test.x, amp_dtype=amp_dtype)
    watch = slice(0, min(len(fit), MONITOR_IMAGES))
    deltas = {f"pattern:{k_}": v.to(device) for k_, v in patterns(tuple(fit.x.shape[1:]), suite.eps, suite.norm,
                                                                  suite.seed).items()}
    deltas.update({f"transfer:{k_}": v.to(device) for k_, v in (candidates or {}).items()})
    fits: dict[str, dict[str, Any]] = {}
    settings: dict[str, tuple[str, str, float, bool]] = {}  # fit name -> (objective, labels, step, adam)
    g = torch.Generator().manual_seed(suite.seed)
    steps = suite.max_epochs * steps_per_pass(len(fit), suite.batch_size)
    # what the fits depend on: the settings, the images, the model (its predictions tell two models apart only
    # sometimes: a trained model is right on most training images, so the caller adds its weights' digest)
    key = {"suite": asdict(suite), "parts": k, "fit": state_digest([fit.x, fit.y, clean_fit]), "amp": str(amp_dtype),
           "identity": identity}
    done = _journal(journal, key)

    def sgd(objective: str, kind: str, lr: float, r: int, adam: bool = False) -> None:
        name = f"{'adam' if adam else 'sgd'}:{objective}/{kind}/lr{lr:g}" + (f"/restart{r}" if r else "")
        if name in done:  # fitted before the suite was killed: its result, and the draws after it
            delta, fits[name], settings[name], state = done[name]
            deltas[name] = delta.to(device)
            g.set_state(state)
            return
        labels = {"predicted": clean_fit, "true": fit.y}.get(kind, torch.full_like(fit.y, -1 if t is None else t))
        watched = (clean_fit if kind == "predicted" else fit.y)[watch].cpu()  # predict answers on the CPU
        # the rate the entry is aimed at: predictions changed (fooling), images now wrong (accuracy)
        # or images of other classes sent to the target
        monitor = lambda d: _rate(scores_fn, fit.x[watch], d, watched, kind, t, amp_dtype)
        if kind == "target":
            loss_fn = lambda x, y: targeted_loss(parts_fn(x), y, objective, suite.confidence)
        else:
            loss_fn = lambda x, y: objective_loss(parts_fn(x), y, objective, suite.beta)
        start = restart_point(r, tuple(fit.x.shape[1:]), suite.eps, suite.norm, g)
        deltas[name], fits[name] = fit_uap(loss_fn, fit.x, labels, eps=suite.eps, norm=suite.norm,
                                           step=lr if adam else lr * suite.eps, max_steps=steps,
                                           batch_size=suite.batch_size, decay=suite.decay, monitor=monitor,
                                           window=suite.window, tol=suite.tol, patience=suite.patience, start=start,
                                           generator=g, amp_dtype=amp_dtype, adam=adam)
        settings[name] = (objective, kind, lr, adam)
        if journal is not None:
            done[name] = (deltas[name].cpu(), fits[name], settings[name], g.get_state())
            save_verified(journal, {"key": key, "fits": done})

    for objective, kind, lr, r in product(objectives, kinds, suite.lrs, range(suite.restarts)):
        sgd(objective, kind, lr, r)
    if t is not None:  # the published attack: Adam on the bounded-logit loss
        for r in range(suite.restarts):
            sgd("bounded_logit", "target", suite.adam_lr, r, adam=True)
    # Fits from different starts end in different optima (the fits are multimodal), so the extra
    # random starts go where they pay: the setting whose fit read the best rate, per kind of labels
    # (rates of one kind are read on the same images, so they compare).
    for kind in kinds:
        mine = [n for n in fits if settings[n][1] == kind]
        objective, _, lr, adam = settings[max(mine, key=lambda n: fits[n]["fit_score"])]
        for r in range(suite.restarts, suite.restarts + suite.refine):
            sgd(objective, kind, lr, r, adam)
    entries = {}
    for name, d in deltas.items():
        adv = predict(scores_fn, test.x, delta=d, amp_dtype=amp_dtype)
        entries[name] = {"fooling_rate": fooling_rate(clean_test, adv), "uap_acc": accuracy(adv, test.y),
                         "asr": attack_success_rate(clean_test, adv, test.y),
                         **({"targeted_success": targeted_success(adv, test.y, t)} if t is not None else {}),
                         **fits.get(name, {})}
    best = {"fooling_rate": max, "uap_acc": min, "asr": max, **({"targeted_success": max} if t is not None else {})}
    # a targeted suite's success rate is its targeted UAPs' (the paper's), not an untuned pattern's
    among = {"asr": [n for n in entries if n in fits]} if t is not None else {}
    won = {m: pick(among.get(m, entries), key=lambda n, m=m: entries[n][m]) for m, pick in best.items()}
    metrics = {"clean_acc": accuracy(clean_test, test.y),
               **{m: entries[n][m] for m, n in won.items()}, **{f"{BY.get(m, m)}_by": n for m, n in won.items()},
               "converged": all(f["converged"] for f in fits.values()), "entries": entries,
               **({"target": t} if t is not None else {})}
    return metrics, {("fooling" if m == "fooling_rate" else m): deltas[n].cpu() for m, n in won.items() if m != "asr"}


def _journal(path: str | Path | None, key: dict[str, Any]) -> dict[str, tuple]:
    """The fits a killed suite with the same ``key`` saved in ``path`` (name -> (delta, fit record,
    setting, generator state after it)); none if there is no such file, it is damaged or it is another suite's."""
    if path is None or not Path(path).exists():
        return {}
    try:
        saved = load_verified(path)
    except CorruptFile:
        return {}
    return saved["fits"] if saved.get("key") == key else {}


BY = {"fooling_rate": "fooling", "targeted_success": "targeted"}  # metric -> prefix of the name of its winner


def _rate(scores_fn: ScoresFn, images: torch.Tensor, delta: torch.Tensor, labels: torch.Tensor, kind: str,
          target: int | None, amp_dtype: torch.dtype | None) -> float:
    adv = predict(scores_fn, images, delta=delta, amp_dtype=amp_dtype)
    if kind == "target":
        return targeted_success(adv, labels, target)
    return fooling_rate(labels, adv) if kind == "predicted" else 1.0 - accuracy(adv, labels)


def mode_fns(model: nn.Module, mode: str = "ensemble", head: int = 0) -> tuple[PartsFn, ScoresFn]:
    """(parts, scores) of an inference mode: a MultiHead's ensemble (its K heads) or single head,
    or any module mapping images in [0, 1] to (B, C) logits (one part)."""
    if isinstance(model, MultiHead):
        if mode == "ensemble":
            return model, lambda x: model.scores(x, "ensemble")
        return (lambda x: model(x)[head:head + 1]), (lambda x: model.scores(x, "single", head))
    return (lambda x: model(x).unsqueeze(0)), model


def attack_model(model: nn.Module, fit: Split, test: Split, suite: Suite, *, mode: str = "ensemble", head: int = 0,
                 candidates: dict[str, torch.Tensor] | None = None,
                 amp_dtype: torch.dtype | None = None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The suite against any model: a ``MultiHead`` (``mode`` ensemble or single ``head``) or a plain
    module mapping images (B, C, H, W) in [0, 1] to (B, classes) logits, e.g. a torchvision model
    with its normalisation inside. ``fit``/``test``: images (uint8 or [0, 1] floats) and labels.
    Returns what ``attack`` returns. The model is attacked in eval mode (``frozen_for_attack``) and
    left as it was."""
    with frozen_for_attack(model):
        parts, scores = mode_fns(model, mode, head)
        fit, test = Split(in_layout(fit.x, model), fit.y, fit.classes), Split(in_layout(test.x, model), test.y, test.classes)
        return attack(parts, scores, fit, test, suite, candidates=candidates, amp_dtype=amp_dtype)
