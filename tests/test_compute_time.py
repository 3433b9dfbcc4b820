"""scripts/compute_time.py: a profile's compute summed from the wall times its cache recorded."""
import importlib.util
import json
from pathlib import Path

import pytest

from dtlib.config import Config
from dtlib.experiment import metrics_path, run_dir_for

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "compute_time.py"
spec = importlib.util.spec_from_file_location("compute_time", SCRIPT)
compute_time = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compute_time)


def _record(where: Path, cfg: Config, train_s: float, eval_s: float, device: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    metrics_path(where, cfg).write_text(json.dumps({"train": {"wall_s": train_s}, "eval_wall_s": eval_s,
                                                    "provenance": {"device": device}}))


def test_each_run_trains_once_and_each_evaluation_counts_once_and_what_is_missing_is_counted_not_guessed(tmp_path):
    """A DT run with two evaluations (L-inf and L2) asked for twice, and a standard run never trained:
    the DT run's training is summed once, its two evaluations each once, the missing run shows as
    planned but not found, with nothing added to the hours."""
    dt = Config(data="mini", method="dt", heads=5)
    dt_l2 = dt.replace(eval_norm="l2", eval_eps=1.0)
    std = Config(data="mini", method="standard", heads=1)
    where = run_dir_for(dt, tmp_path)
    assert run_dir_for(dt_l2, tmp_path) == where and dt.eval_hash() != dt_l2.eval_hash()
    _record(where, dt, 100.0, 600.0, "cpu (A)")
    _record(where, dt_l2, 100.0, 300.0, "cpu (B)")
    found = compute_time.summarize([dt, dt_l2, dt, std], tmp_path)
    assert found["runs"] == 2 and found["evaluations"] == 3
    assert found["rows"]["dt K=5"] == dict(runs=1, runs_found=1, train_s=100.0, evaluations=2, evaluations_found=2,
                                           eval_s=900.0)
    assert found["rows"]["standard K=1"] == dict(runs=1, runs_found=0, train_s=0.0, evaluations=1,
                                                 evaluations_found=0, eval_s=0.0)
    assert found["machines"] == {"cpu (A)": 1, "cpu (B)": 1}
    assert list(found["rows"]) == sorted(found["rows"])


@pytest.mark.parametrize("backbone, name", [("cnn", "dt K=5"), ("vgg", "dt K=5 (vgg)")])
def test_an_arm_is_named_by_method_k_and_a_backbone_other_than_the_compact_cnn(backbone, name):
    assert compute_time.arm(Config(data="mini", method="dt", heads=5, backbone=backbone)) == name
