"""Attacks shared by every trainer and by the evaluation. Pixels in [0, 1]; eps and steps in pixel units.

A ``scores_fn`` maps images (B, 3, H, W) in [0, 1] to (B, classes) scores, e.g.
``lambda x: model.scores(x, "ensemble")``: every attack is fitted against the exact inference mode
that is evaluated (white-box, adaptive).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import NORMS, check_radius
from .data import check_images, to_float
from .metrics import ScoresFn, fooling_rate, perturb, predict, targeted_success
from .models import MultiHead


def _check(eps: float, norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"Unknown norm {norm!r}; choose one of {', '.join(NORMS)}.")
    check_radius("eps", eps, norm)


def _autocast(device: torch.device, amp_dtype: torch.dtype | None) -> torch.autocast:
    return torch.autocast(device_type=device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None)


def _l2(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (t.dim() - 1))


def project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project each perturbation in ``delta`` (first dim = batch) onto the ``norm`` ball of radius eps."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    return delta * (eps / _l2(delta)).clamp(max=1.0)


def ascent(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """Steepest-ascent direction of unit ``norm`` size: sign for L-inf, normalised gradient for L2."""
    return grad.sign() if norm == "linf" else grad / _l2(grad)


def random_uap(shape: tuple[int, ...], eps: float, norm: str = "linf",
               generator: torch.Generator | None = None) -> torch.Tensor:
    """A random perturbation of the same norm as a UAP (the floor every UAP is read against):
    uniformly random signs times eps (L-inf), or a Gaussian direction scaled to radius eps (L2)."""
    _check(eps, norm)
    if norm == "linf":
        return eps * (torch.rand(shape, generator=generator) < 0.5).float().mul_(2).sub_(1)
    d = torch.randn(shape, generator=generator)
    return d * (eps / _l2(d))


@contextmanager
def frozen_for_attack(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` as an attack on its inputs wants it, restored afterwards: eval mode, parameters
    frozen (an attack needs input gradients only) and, for this project's models on the CPU, 4-D
    weights channels_last, for images in that layout (``in_layout``). Measured on a UAP step of the
    compact CNN in fp32 on an AVX2 CPU: recording the weights' graph cost 15-25%, the default layout
    1.3-1.4x. Other modules keep their layout: one that flattens with ``.view`` would fail on
    channels_last activations. The function computed is the same."""
    training = model.training
    grads = [(p, p.requires_grad) for p in model.parameters()]
    convert = isinstance(model, MultiHead) and next((t.device.type == "cpu" for t in model.parameters()), False)
    layouts = [(t, t.data) for t in (*model.parameters(), *model.buffers()) if t.dim() == 4] if convert else []
    model.eval()
    for p, _ in grads:
        p.requires_grad_(False)
    for t, data in layouts:
        t.data = data.contiguous(memory_format=torch.channels_last)
    try:
        yield model
    finally:
        for t, data in layouts:  # the attack changes no weight: the tensors they were, as they were
            t.data = data
        for p, g in grads:
            p.requires_grad_(g)
        model.train(training)


def in_layout(images: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """Images (N, C, H, W) in the memory layout of ``model``'s first convolution weight: channels_last
    inside ``frozen_for_attack`` for this project's models on the CPU, else as they are."""
    w = next((p for p in model.parameters() if p.dim() == 4), None)
    last = w is not None and not w.is_contiguous() and w.is_contiguous(memory_format=torch.channels_last)
    return images.contiguous(memory_format=torch.channels_last) if last else images


LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (perturbed images, labels) -> scalar to ascend


def steps_per_pass(n: int, batch_size: int) -> int:
    """SGD-UAP steps in one pass of ``fit_uap`` over ``n`` images: whole batches only (at least one)."""
    return max(n // batch_size, 1)


def fit_uap(loss_fn: LossFn, images: torch.Tensor, labels: torch.Tensor, *, eps: float, norm: str = "linf",
            step: float, max_steps: int, batch_size: int = 128, decay: float = 1.0,
            monitor: Callable[[torch.Tensor], float] | None = None, window: int = 0, tol: float = 0.0,
            patience: int = 1, start: torch.Tensor | None = None, generator: torch.Generator | None = None,
            amp_dtype: torch.dtype | None = None, adam: bool = False) -> tuple[torch.Tensor, dict[str, Any]]:
    """SGD-UAP (Shafahi et al., AAAI 2020): signed-gradient ascent of one perturbation on
    ``loss_fn(x + delta, y)`` over minibatches of ``images`` (a new seeded order each pass), projected
    to the ``norm`` ball of radius eps after each step of ``step`` (pixel units), which shrinks by
    ``decay`` after every pass. A pass leaves out the images that do not fill a last whole batch (a
    different few each pass): a full-size step on the gradient of a handful of images knocks the
    perturbation back once per pass (5,000 images in batches of 128 end each pass on 8; with that
    step the fitting-set rate see-sawed from reading to reading and the stopping rule ran longer to
    a weaker UAP). ``start``: the first delta (default zero). With ``adam``, Adam's
    update at learning rate ``step`` takes the signed step's place (how the published paper's code
    fits its UAPs), still projected after every step.

    The stopping rule, when ``monitor`` (delta -> a fitting-set rate, higher = stronger) and
    ``window`` are given: every ``window`` steps the rate is read; fitting stops once the last
    ``patience`` readings in a row have not raised the best rate by more than ``tol`` (converged:
    no gain over ``patience * window`` steps, so one unlucky reading does not end it), else after
    ``max_steps``. The best delta read is returned. Without it, ``max_steps`` steps and the last delta.

    Returns (delta (1, C, H, W) on images' device, {"steps", "converged", "fit_score", "trace"})."""
    _check(eps, norm)
    check_images(images, "UAP fitting images")
    device = images.device
    delta = (torch.zeros(1, *images.shape[1:]) if start is None else start.detach().cpu()).to(device)
    rule = monitor is not None and window > 0
    best = delta
    trace = [monitor(delta)] if rule else []
    steps, converged = 0, False
    param = delta.clone().requires_grad_(True)
    opt = torch.optim.Adam([param], lr=step) if adam else None
    while steps < max_steps and not converged:
        order = torch.randperm(len(images), generator=generator).to(device)
        for b in range(0, steps_per_pass(len(images), batch_size) * batch_size, batch_size):
            idx = order[b:b + batch_size]
            delta.requires_grad_(True)
            with _autocast(device, amp_dtype):
                loss = loss_fn(perturb(to_float(images[idx]), delta), labels[idx])
            grad, = torch.autograd.grad(loss, delta)
            if opt is None:
                delta = project(delta.detach() + step * ascent(grad, norm), eps, norm)
            else:  # Adam descends: hand it the negative of the ascent gradient
                param.grad = -grad
                opt.step()
                with torch.no_grad():
                    param.copy_(project(param, eps, norm))
                delta = param.detach().clone()
            steps += 1
            if rule and (steps % window == 0 or steps == max_steps):
                score = monitor(delta)
                if score > max(trace):
                    best = delta
                trace.append(score)
                converged = len(trace) > patience and max(trace[-patience:]) - max(trace[:-patience]) <= tol
            if steps >= max_steps or converged:
                break
        step *= decay
        if opt is not None:
            opt.param_groups[0]["lr"] = step
    out = best if rule else delta
    return out.detach(), {"steps": steps, "converged": converged, "fit_score": max(trace) if trace else None,
                          "trace": trace}


def restart_point(restart: int, shape: tuple[int, ...], eps: float, norm: str,
                  generator: torch.Generator) -> torch.Tensor | None:
    """Where restart ``restart`` of an SGD-UAP starts: zero (None) for the first, else a random point of the ball."""
    if restart == 0:
        return None
    return random_uap((1, *shape), eps, norm, generator) * torch.rand(1, generator=generator)


def sgd_uap(scores_fn: ScoresFn, images: torch.Tensor, labels: torch.Tensor, *, eps: float,
            norm: str = "linf", target: int | None = None, epochs: int = 5, batch_size: int = 128,
            lr: float | Sequence[float] = 0.1, decay: float = 0.8, beta: float = 12.0, restarts: int = 1, seed: int = 0,
            amp_dtype: torch.dtype | None = None) -> torch.Tensor:
    """SGD-UAP with a fixed budget, ``epochs`` passes over ``images`` (``fit_uap``), against ``scores_fn``.

    ``images`` (N, 3, H, W), uint8 or floats in [0, 1], are the fitting images (training data);
    the loss is per-example cross-entropy clamped at ``beta`` (so already-fooled images stop
    dominating) for an untargeted UAP, or minus the cross-entropy to ``target`` for a targeted one.
    Each step moves ``lr * eps`` along the ascent direction and projects; the step shrinks by
    ``decay`` each epoch. Restart 0 starts at zero, later ones at a random point of the ball; the
    UAP that does best on the fitting images is returned, shape (1, 3, H, W), on images' device."""
    _check(eps, norm)
    if target is not None and not 0 <= target < 10:
        raise ValueError(f"target class {target} is outside 0..9.")
    g = torch.Generator().manual_seed(seed)
    best, best_score = None, float("-inf")
    lrs = [lr] if isinstance(lr, (int, float)) else list(lr)
    if target is None:
        loss_fn = lambda x, y: F.cross_entropy(scores_fn(x).float(), y, reduction="none").clamp(max=beta).mean()
    else:
        loss_fn = lambda x, y: -F.cross_entropy(scores_fn(x).float(), torch.full_like(y, target))
    steps = epochs * steps_per_pass(len(images), batch_size)
    for lr_, r in ((lr_, r) for lr_ in lrs for r in range(restarts)):
        start = restart_point(r, tuple(images.shape[1:]), eps, norm, g)
        delta, _ = fit_uap(loss_fn, images, labels, eps=eps, norm=norm, step=lr_ * eps, max_steps=steps,
                           batch_size=batch_size, decay=decay, start=start, generator=g, amp_dtype=amp_dtype)
        score = _fit_score(scores_fn, images, labels, delta, target, batch_size, amp_dtype)
        if best is None or score > best_score:  # NaN scores (no non-target image) keep restart 0
            best, best_score = delta, score
    return best


@torch.no_grad()
def _fit_score(scores_fn: ScoresFn, images: torch.Tensor, labels: torch.Tensor, delta: torch.Tensor,
               target: int | None, batch_size: int, amp_dtype: torch.dtype | None) -> float:
    adv = predict(scores_fn, images, delta=delta, batch_size=batch_size, amp_dtype=amp_dtype)
    if target is not None:
        return targeted_success(adv, labels.cpu(), target)
    return fooling_rate(predict(scores_fn, images, batch_size=batch_size, amp_dtype=amp_dtype), adv)


def pgd(scores_fn: ScoresFn, x: torch.Tensor, y: torch.Tensor, *, eps: float, alpha: float, steps: int,
        norm: str = "linf", random_start: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
    """PGD (Madry et al.): ``steps`` ascent steps of size ``alpha`` on the cross-entropy, projected to
    the ``norm`` ball of radius eps around x (floats in [0, 1]); returns detached adversarial images.
    Only the input gets gradients, so parameters' .grad are untouched. Runs under the caller's autocast."""
    _check(eps, norm)
    delta = torch.zeros_like(x)
    if random_start:
        if norm == "linf":
            # drawn where the generator lives: a CUDA generator keeps the draw (and no copy) on the GPU
            where = generator.device if generator is not None else torch.device("cpu")
            delta = (torch.rand(x.shape, generator=generator, device=where) * 2 - 1).to(x.device) * eps
        else:
            delta = random_uap(tuple(x.shape), eps, norm, generator).to(x.device)
        delta = perturb(x, delta) - x
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(scores_fn(x + delta).float(), y)
        grad, = torch.autograd.grad(loss, delta)
        delta = project(delta.detach() + alpha * ascent(grad, norm), eps, norm)
        delta = perturb(x, delta) - x
    return (x + delta).detach()
