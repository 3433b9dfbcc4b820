"""The study behind the notebooks, in three parts: ``settings`` (the Study record, its profiles and
``setup``), ``claims`` (the summary's figures and the verdict rules; torch-free) and
``experiments`` (the five experiments). ``notebook`` holds the one-line calls of the notebooks'
cells. Every name a notebook or script uses is offered by ``dtlib.study`` itself, each loaded from
its module on first use (as ``dtlib`` does), so ``dtlib.study.claims`` alone stays torch-free."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

_NAMES = {
    "settings": ("NOTEBOOK_PARAMETERS", "NOTEBOOKS", "PER_RUN", "PROFILES", "SHARED_FIELDS", "STUDY_FIELDS", "Study",
                 "bars_for", "check_parameters", "check_study", "setup"),
    "claims": ("INCONCLUSIVE", "MIN_NOISE", "ORDER", "SEED", "accuracy_cost_verdict", "claim", "cost_claims",
               "cost_verdict", "cross_claims", "figure_verdict", "finite", "fmt", "headline_claims", "inconclusive",
               "k_claims", "mean_spread", "missing", "noise", "not_measured", "overhead_verdict", "ratio", "summarise",
               "transfer_claims", "unconverged", "verdict"),
    "experiments": ("CROSS_ARMS", "EXPERIMENTS", "METRICS", "arms", "attack_check", "cost", "cross_norm", "headline",
                    "k_ablation", "save", "select_dt", "transfer"),
}
# name -> the module of dtlib.study that defines it
EXPORTS = {name: module for module, names in _NAMES.items() for name in names}
__all__ = sorted(EXPORTS)

if TYPE_CHECKING:  # what type checkers and IDEs see
    from .claims import *  # noqa: F403
    from .experiments import *  # noqa: F403
    from .settings import *  # noqa: F403


__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
