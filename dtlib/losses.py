"""The Jensen-Shannon divergence of K heads and the Democratic Training loss. Entropies in nats.

All functions take per-head logits (K, B, C) and work from log-softmax, so one-hot or vanishing
probabilities give finite values and gradients (0 * log 0 never appears).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .models import check_head_logits, ensemble_log_probs


def entropy_from_log_probs(log_probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy over the last dimension, from log-probabilities."""
    return -(log_probs.exp() * log_probs).sum(-1)


def jsd(logits: torch.Tensor) -> torch.Tensor:
    """Generalised Jensen-Shannon divergence of the K heads' softmaxes, per example (B,):
    H(mean_k p_k) - mean_k H(p_k). It is 0 when all heads agree and at most log K."""
    check_head_logits(logits)
    lp = F.log_softmax(logits.float(), dim=-1)
    mean_lp = torch.logsumexp(lp, dim=0) - math.log(lp.shape[0])
    return entropy_from_log_probs(mean_lp) - entropy_from_log_probs(lp).mean(0)


def heads_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean over heads and examples of each head's cross-entropy."""
    check_head_logits(logits)
    k, b, c = logits.shape
    return F.cross_entropy(logits.float().reshape(k * b, c), y.repeat(k))


def ensemble_cross_entropy(logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of the ensemble (mean of the heads' softmaxes)."""
    return F.nll_loss(ensemble_log_probs(logits), y, reduction=reduction)


def dt_loss(clean_logits: torch.Tensor, uap_logits: torch.Tensor, y: torch.Tensor, *,
            lambda_cons: float = 1.0, lambda_div: float = 1.0, lambda_adv: float = 0.0,
            uap_y: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Democratic Training loss on per-head logits (K, B, C) of clean and UAP-perturbed images:

        mean_k CE(head k, clean) + lambda_cons * JSD(clean) - lambda_div * JSD(uap)
        + lambda_adv * CE(ensemble, uap)

    ``uap_y``: the perturbed images' labels where they are not ``y`` (fewer perturbed than clean
    images, ``perturbed_fraction``). Returns the scalar loss and its parts (detached) for logging."""
    for name, w in (("lambda_cons", lambda_cons), ("lambda_div", lambda_div), ("lambda_adv", lambda_adv)):
        if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
            raise ValueError(f"{name} must be a finite non-negative number, got {w!r}.")
    parts = {"ce": heads_cross_entropy(clean_logits, y),
             "jsd_clean": jsd(clean_logits).mean(),
             "jsd_uap": jsd(uap_logits).mean()}
    loss = parts["ce"] + lambda_cons * parts["jsd_clean"] - lambda_div * parts["jsd_uap"]
    if lambda_adv:
        parts["ce_uap"] = ensemble_cross_entropy(uap_logits, y if uap_y is None else uap_y)
        loss = loss + lambda_adv * parts["ce_uap"]
    return loss, {k: v.detach() for k, v in parts.items()}
