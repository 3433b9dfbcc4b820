"""dtlib: Democratic Training against universal adversarial perturbations, reproduced on CIFAR-10.

``import dtlib`` loads nothing heavy: each name below comes from its module on first use (PEP 562,
the lazy loading of Scientific Python's SPEC 1), so ``python -m dtlib.figures`` redraws figures
from saved results without importing torch or the training stack."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .lazy import lazy_exports

# name -> the dtlib module that defines it
EXPORTS = {"Config": "config", "MultiHead": "models", "build_model": "models", "RunResult": "experiment",
           "evaluate_run": "experiment", "load_model": "experiment", "results_table": "experiment", "run": "experiment",
           "Suite": "suite", "attack_model": "suite"}
__all__ = sorted(EXPORTS)

if TYPE_CHECKING:  # what type checkers and IDEs see
    from .config import Config  # noqa: F401
    from .experiment import RunResult, evaluate_run, load_model, results_table, run  # noqa: F401
    from .models import MultiHead, build_model  # noqa: F401
    from .suite import Suite, attack_model  # noqa: F401


__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
