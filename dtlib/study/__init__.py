"""The study behind the notebooks, in three parts: ``settings`` (the Study record, its profiles and
``setup``), ``claims`` (the summary's figures and the verdict rules; torch-free) and
``experiments`` (the five experiments). ``notebook`` holds the one-line calls of the notebooks'
cells. Everything a notebook or a script uses is importable from ``dtlib.study`` itself."""
from .claims import (MIN_NOISE, ORDER, SEED, accuracy_cost_verdict, claim, cost_claims, cost_verdict, cross_claims,
                     figure_verdict, finite, fmt, headline_claims, inconclusive, k_claims, mean_spread, missing, noise,
                     not_measured, overhead_verdict, ratio, summarise, transfer_claims, verdict)
from .experiments import (CROSS_ARMS, EXPERIMENTS, METRICS, arms, attack_check, cost, cross_norm, headline, k_ablation,
                          save, select_dt, transfer)
from .settings import (NOTEBOOK_PARAMETERS, NOTEBOOKS, PER_RUN, PROFILES, SHARED_FIELDS, STUDY_FIELDS, Study, bars_for,
                       check_parameters, check_study, setup)

__all__ = ["CROSS_ARMS", "EXPERIMENTS", "METRICS", "MIN_NOISE", "NOTEBOOKS", "NOTEBOOK_PARAMETERS", "ORDER", "PER_RUN",
           "PROFILES", "SEED", "SHARED_FIELDS", "STUDY_FIELDS", "Study", "accuracy_cost_verdict", "arms", "attack_check",
           "bars_for", "check_parameters", "check_study", "claim", "cost", "cost_claims", "cost_verdict", "cross_claims",
           "cross_norm", "figure_verdict", "finite", "fmt", "headline", "headline_claims", "inconclusive", "k_ablation",
           "k_claims", "mean_spread", "missing", "noise", "not_measured", "overhead_verdict", "ratio", "save",
           "select_dt", "setup", "summarise", "transfer", "transfer_claims", "verdict"]
