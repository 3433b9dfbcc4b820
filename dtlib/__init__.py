"""dtlib: Democratic Training against universal adversarial perturbations, reproduced on CIFAR-10."""
from .config import Config
from .experiment import RunResult, evaluate_run, load_model, results_table, run
from .models import MultiHead, build_model

__all__ = ["Config", "MultiHead", "RunResult", "build_model", "evaluate_run",
           "load_model", "results_table", "run"]
