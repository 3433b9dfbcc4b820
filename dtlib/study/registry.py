"""Which experiment each notebook runs: ``EXPERIMENTS`` (notebook name -> function of a Study)."""
from __future__ import annotations

from typing import Any, Callable

from .experiments import cost, cross_norm, headline, k_ablation, transfer
from .published import published_method

EXPERIMENTS: dict[str, Callable[..., dict[str, Any]]] = {
    "01_headline": headline, "02_k_ablation": k_ablation, "03_cross_norm": cross_norm,
    "04_transfer": transfer, "05_cost": cost, "06_published_method": published_method}
