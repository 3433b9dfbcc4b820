"""The study behind the notebooks: ``settings`` (the Study record, its profiles and ``setup``),
``claims`` (the summary's figures and the claims rows) and ``rules`` (the verdict rules), both
torch-free, ``selection`` (DT's settings chosen on validation, and the arms), ``experiments`` and
``published`` (the six experiments; ``registry`` names them), ``check`` (the attack check they all
take their figures through) and ``fill`` (their run cache filled in
parallel lanes before the batch), ``carry`` (that cache packed into a folder to commit, and unpacked
on another machine), ``export`` (the models as weights-only files). ``notebook`` holds the one-line
calls of the notebooks' cells. Every name a notebook or script uses is offered by ``dtlib.study``
itself, each loaded from its module on first use (as ``dtlib`` does), so ``dtlib.study.claims``
alone stays torch-free."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

_NAMES = {
    "settings": ("NOTEBOOK_PARAMETERS", "NOTEBOOKS", "PER_RUN", "PROFILES", "SHARED_FIELDS", "STUDY_FIELDS", "Study",
                 "bars_for", "check_parameters", "check_study", "setup"),
    "claims": ("SEED", "claim", "cost_claims", "cross_claims", "headline_claims", "k_claims", "not_measured",
               "published_claims", "summarise", "transfer_claims"),
    "rules": ("INCONCLUSIVE", "MIN_NOISE", "ORDER", "accuracy_cost_verdict", "cost_verdict", "figure_verdict", "finite",
              "fmt", "gate", "inconclusive", "mean_spread", "missing", "noise", "overhead_verdict", "ratio", "unconverged",
              "verdict"),
    "check": ("MAX_LEVEL", "attack_check", "checked", "checked_seeds", "stronger", "suite_at", "suite_for", "unsettled"),
    "experiments": ("CROSS_ARMS", "METRICS", "cost", "cross_norm", "headline", "k_ablation", "save", "transfer"),
    "selection": ("arms", "chosen_step", "compare_attackers", "select_dt"),
    "published": ("ARMS", "published_method", "uap_metrics"),
    "registry": ("EXPERIMENTS",),
    "fill": ("fill_runs", "plan"),
    "carry": ("pack", "pack_runs", "unpack"),
    "export": ("export_models",),
}
# name -> the module of dtlib.study that defines it
EXPORTS = {name: module for module, names in _NAMES.items() for name in names}
__all__ = sorted(EXPORTS)

if TYPE_CHECKING:  # what type checkers and IDEs see
    from .check import *  # noqa: F403
    from .claims import *  # noqa: F403
    from .experiments import *  # noqa: F403
    from .carry import *  # noqa: F403
    from .fill import *  # noqa: F403
    from .published import *  # noqa: F403
    from .registry import *  # noqa: F403
    from .rules import *  # noqa: F403
    from .selection import *  # noqa: F403
    from .settings import *  # noqa: F403


__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
