"""The benchmark (``python -m dtlib.bench``): its record, its tables, and its settings."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dtlib import figures
from dtlib.bench import main, run, setup
from dtlib.bench_report import report
from dtlib.measure import device_slug
from dtlib.roofline import ceilings

from conftest import MINI

pytestmark = pytest.mark.precision  # times real training steps: run under both precisions (make test-other-precision)


@pytest.mark.heavy
def test_the_benchmark_writes_every_ratio_target_and_memory_per_k(tmp_path):
    lines = []
    rec = run(setup({"steps": "2", "warmup": "0", "infer_steps": "2", "profile_steps": "1", "batch_size": "16",
                     "infer_batch": "16", "out": str(tmp_path), "train_size": "320", "uap_fit_size": "64",
                     "uap_epochs": "1", "uap_lr": "0.25", "uap_refine": "1", "eval_size": "50", **MINI}),
              log=lines.append)
    name = device_slug(torch.device("cpu"))  # cpu-<kind>: one record per kind of CPU
    saved = json.loads((tmp_path / f"bench-{name}.json").read_text())
    assert saved["ratios"] == pytest.approx(rec["ratios"]) and saved["device"] == name
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"bench-{name}.json", f"bench-{name}.md"]  # no temporary file left
    for key in ("dt_k5_train", "dt_k10_train", "pgd_train", "uat_train", "single_head_infer", "ensemble_k5_infer"):
        assert saved["ratios"][key] > 0, key
    assert saved["ratios"]["dt_k5_train"] == pytest.approx(saved["train"]["dt_k5"]["median_s"] / saved["train"]["standard"]["median_s"])
    assert saved["ratios"]["single_head_infer"] == pytest.approx(
        saved["inference"]["single_head_k5"]["median_s"] / saved["inference"]["plain"]["median_s"])
    for key, t in saved["targets"].items():
        assert t["met"] == (t["measured"] <= t["target"]), key
    assert set(saved["memory_by_k"]) == {"1", "2", "5", "10"}
    assert all(m["peak_mb_checkpointing"] < m["peak_mb"] for m in saved["memory_by_k"].values())
    assert saved["provenance"]["git_commit"] and saved["settings"]["config"]["batch_size"] == 16
    assert "uap_gradient" in saved["train"]["dt_k5"]["phases_ms"]
    assert "uap_gradient" not in saved["train"]["dt_k5_loss"]["phases_ms"]
    ops = saved["train"]["dt_k5"]["ops_ms"]  # operators land in the phase that ran them
    assert not any("backward" in op.lower() for op in ops["forward_and_loss"])
    assert "backward" in next(iter(ops["uap_gradient"])) and "backward" in next(iter(ops["backward"]))
    assert any("| dt_k5_train | <= 2 |" in line for line in lines)
    # the roofline: each step's counted FLOPs over its median time, against the ceilings measured here
    assert saved["ceilings"]["gemm_gflops"] > 0 and isinstance(saved["cpu_flags"], list)
    for case, c in saved["train"].items():
        assert c["roofline"]["gflops"] == pytest.approx(c["flops"] / c["median_s"] / 1e9), case
    t = saved["train"]
    assert t["standard_2b"]["flops"] == pytest.approx(2 * t["standard"]["flops"], rel=0.01)
    assert t["dt_k5_every4"]["flops"] < t["dt_k5_every2"]["flops"] < t["dt_k5"]["flops"]
    assert "GFLOP/s | of GEMM | of nominal" in (tmp_path / f"bench-{name}.md").read_text()
    # one full evaluation per model: one head -> 1 objective x 2 labels x 1 step size, then one random
    # start of the best per label kind (uap_refine=1)
    ev, refine = saved["evaluation"], 2 * 1
    assert (ev["standard"]["modes"], ev["standard"]["sgd_fits"]) == (["head0"], 2 + refine)
    assert (ev["dt_k5"]["modes"], ev["dt_k5"]["sgd_fits"]) == (["ensemble", "head0"], 3 * 2 + refine + 2 + refine)
    assert all(e["seconds"] > 0 and e["sgd_steps"] >= e["sgd_fits"] and (e["n_fit"], e["n_test"]) == (64, 50)
               for e in ev.values())
    md = (tmp_path / f"bench-{name}.md").read_text()
    (tmp_path / f"bench-{name}.md").unlink()
    figures.regenerate(tmp_path, tmp_path / "figures")  # the tables come back from the JSON alone
    assert (tmp_path / f"bench-{name}.md").read_text() == md


@pytest.mark.parametrize("args,message", [
    (["bogus=1"], "Unknown benchmark setting 'bogus'"),
    (["ks=1,2"], "ks=(1, 2) must hold 1, 5 and 10"),
    (["steps=0"], "steps must be at least 1, got 0"),
    (["steps=many"], "steps='many' is not an integer"),
    (["epoch=ture"], "epoch='ture' is not true or false"),
    (["compile=true", "checkpointing=true"], "compile=true cannot be combined with checkpointing=true"),
    (["heads"], "Argument 'heads' is not of the form key=value"),
])
def test_benchmark_settings_errors_are_one_sentence(args, message, capsys):
    assert main(args) == 2  # in this process: a subprocess per case is seconds of imports each
    out = capsys.readouterr()
    assert out.out == "" and out.err.startswith("error: ") and message in out.err and len(out.err.splitlines()) == 1


def test_the_benchmark_command_exits_2_on_a_bad_setting():
    out = subprocess.run([sys.executable, "-m", "dtlib.bench", "steps=0"], capture_output=True, text=True)
    assert out.returncode == 2 and out.stdout == "" and out.stderr == "error: steps must be at least 1, got 0.\n"


def test_setup_keeps_the_cpu_defaults_on_a_cpu():
    b = setup({"device": "cpu"})
    assert (b.steps, b.epoch, b.config.backbone, b.config.batch_size) == (30, False, "cnn", 128)




@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parent.parent / "results").glob("bench-*.json")),
                         ids=lambda p: p.stem)
def test_each_committed_benchmark_table_is_its_records_report(path):
    """One record per kind of CPU (bench-cpu-<kind>; bench-cpu-<kind>-<machine> for another machine of
    that kind) or GPU; its Markdown is what ``report`` draws from it (records written before the
    roofline columns included)."""
    record = json.loads(path.read_text())
    assert report(record) in path.with_suffix(".md").read_text()
    kind = f"bench-{record['device']}"
    assert path.stem == kind or path.stem.startswith(kind + "-") or record["device"] == "cpu"  # AMX's predates the kinds


def test_the_roofline_names_the_matrix_product_it_was_measured_against():
    """1024 x 1024 on a CPU, 8192 x 8192 on a GPU (a small product there times the launch): new records
    store the side, and older ones (the committed GPU records among them) are read by their device."""
    assert ceilings(torch.device("cpu"), "fp32", 1)["gemm_n"] == 1024
    for path in sorted((Path(__file__).resolve().parent.parent / "results").glob("bench-*.json")):
        record = json.loads(path.read_text())
        if "ceilings" in record:
            n = 1024 if record["device"].startswith("cpu") else 8192
            assert f"against a {n} x {n} matrix product" in report(record), path.name
