import json
import subprocess
import sys
import time

import pytest
import torch

from dtlib import Config, figures
from dtlib.bench import PeakTensorBytes, phase_split, ratio_summary, run, setup, training_steps
from dtlib.data import load_cifar10
from dtlib.models import build_model
from dtlib.train import STEPS, make_optimizer, phase_clock, prepare, train_step, unwrap

from conftest import DATA_DIR, MINI

pytestmark = pytest.mark.precision  # times real training steps: run under both precisions (make test-other-precision)


def test_peak_tensor_bytes_counts_what_the_block_creates_at_its_peak():
    before = torch.zeros(1000)
    with PeakTensorBytes() as t:
        before.add_(1)                   # in place on a tensor from before: nothing new
        a = torch.ones(1000)             # 4,000 bytes
        b = torch.ones(2000)             # 8,000
        _ = b[:10]                       # a view: no new storage
        del a
        c = torch.ones(500)              # 2,000, after a's 4,000 were freed
    assert t.peak == 12000
    assert t.current == 10000
    del b, c


def test_checkpointing_lowers_a_dt_steps_memory_and_extra_heads_cost_only_their_weights():
    def peak(**kw):
        cfg = Config(method="dt", batch_size=32, **MINI, **kw)
        torch.manual_seed(0)
        model = build_model(cfg).train()
        step, opt = STEPS["dt"](model, cfg, torch.device("cpu")), make_optimizer(model, cfg)
        x, y = torch.rand(32, 3, 32, 32), torch.randint(0, 10, (32,))
        train_step(step, opt, x, y, None)  # the optimizer state exists from here on
        with PeakTensorBytes() as t:
            train_step(step, opt, x, y, None)
        return t.peak

    k1, k10, k10_ckpt = peak(heads=1), peak(heads=10), peak(heads=10, checkpointing=True)
    assert k10_ckpt < 0.8 * k10
    # nine more heads of 10 x 128 weights + 10 biases: their gradients and per-head logits, nothing per pixel
    assert 0 < k10 - k1 < 0.02 * k1


def test_phase_clock_splits_a_step_and_only_dt_ensemble_ce_takes_a_second_pass():
    cfg = Config(method="dt", heads=3, batch_size=32, **MINI)
    x, y = torch.rand(32, 3, 32, 32), torch.randint(0, 10, (32,))
    for objective, second_pass in (("ensemble_ce", True), ("loss", False)):
        c = cfg.replace(uap_objective=objective)
        model = build_model(c).train()
        step, opt = STEPS["dt"](model, c, torch.device("cpu")), make_optimizer(model, c)
        with phase_clock() as clock:
            train_step(step, opt, x, y, None)
        assert set(clock) == {"forward_and_loss", "backward", "uap_update", "optimizer"} | ({"uap_gradient"} if second_pass else set())
        assert clock["uap_gradient" if second_pass else "backward"] > 0
        parts = phase_split({k: 1e3 * v for k, v in clock.items()})
        assert parts["forward_and_loss"] > 0 and sum(parts.values()) == pytest.approx(
            1e3 * sum(v for k, v in clock.items() if k != "uap_gradient"))
    seen = dict(clock)
    train_step(step, opt, x, y, None)  # outside the clock nothing is recorded
    assert clock == seen
    with phase_clock() as clock:  # the phases cover the step: their sum is its wall time, less the glue
        t0 = time.perf_counter()
        train_step(step, opt, x, y, None)
        wall = time.perf_counter() - t0
    covered = sum(v for k, v in clock.items() if k != "uap_gradient")
    assert 0.8 * wall < covered <= wall


def test_ratio_summary_pairs_rounds_and_takes_quartiles_of_per_round_ratios():
    times, ref = [2.0, 4.0, 3.0, 30.0, 2.5], [1.0, 1.0, 1.5, 10.0, 1.0]
    r = ratio_summary(times, ref)
    assert r["ratio"] == pytest.approx(3.0 / 1.0)  # median / median, as the issue defines the ratio
    assert r["ratio_quartiles"] == pytest.approx((2.0, 3.0))  # of 2, 4, 2, 3, 2.5
    with pytest.raises(ValueError, match="Got 2 times but 1 reference times"):
        ratio_summary([1.0, 2.0], [1.0])


def test_training_steps_ratios_are_medians_over_the_reference_with_per_round_spread():
    mini = load_cifar10("mini", DATA_DIR)["train"]
    base = Config(batch_size=32, **MINI)
    out = training_steps(base, mini.subset(torch.arange(256)), {"standard": {}, "uat": {"method": "uat"}},
                         steps=5, warmup=1)
    for name, r in out.items():
        assert len(r["times_s"]) == 5
        assert r["ratio"] == pytest.approx(r["median_s"] / out["standard"]["median_s"])
        assert r["images_per_s"] == pytest.approx(32 / r["median_s"])
        lo, hi = r["ratio_quartiles"]
        assert lo <= hi
        assert r["memory"]["peak_mb"] == pytest.approx(r["memory"]["params_mb"] + r["memory"]["optimizer_mb"]
                                                       + r["memory"]["step_peak_mb"])
    assert out["standard"]["ratio"] == 1 and out["standard"]["ratio_quartiles"] == (1, 1)


def test_the_benchmark_writes_every_ratio_target_and_memory_per_k(tmp_path):
    lines = []
    rec = run(setup({"steps": "2", "warmup": "0", "infer_steps": "2", "profile_steps": "1", "batch_size": "16",
                     "infer_batch": "16", "out": str(tmp_path), **MINI}), log=lines.append)
    saved = json.loads((tmp_path / "bench-cpu.json").read_text())
    assert saved["ratios"] == pytest.approx(rec["ratios"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench-cpu.json", "bench-cpu.md"]  # no temporary file left
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
    md = (tmp_path / "bench-cpu.md").read_text()
    (tmp_path / "bench-cpu.md").unlink()
    figures.regenerate(tmp_path, tmp_path / "figures")  # the tables come back from the JSON alone
    assert (tmp_path / "bench-cpu.md").read_text() == md


@pytest.mark.parametrize("args,message", [
    (["bogus=1"], "Unknown benchmark setting 'bogus'"),
    (["ks=1,2"], "ks=(1, 2) must hold 1, 5 and 10"),
    (["steps=0"], "steps must be at least 1, got 0"),
    (["steps=many"], "steps='many' is not an integer"),
    (["epoch=ture"], "epoch='ture' is not true or false"),
    (["compile=true", "checkpointing=true"], "compile=true cannot be combined with checkpointing=true"),
    (["heads"], "Argument 'heads' is not of the form key=value"),
])
def test_benchmark_settings_errors_are_one_sentence(args, message):
    out = subprocess.run([sys.executable, "-m", "dtlib.bench", *args], capture_output=True, text=True)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("error: ") and message in out.stderr and len(out.stderr.splitlines()) == 1


def test_setup_keeps_the_cpu_defaults_on_a_cpu():
    b = setup({"device": "cpu"})
    assert (b.steps, b.epoch, b.config.backbone, b.config.batch_size) == (30, False, "cnn", 128)


def test_a_compiled_dt_step_trains_exactly_as_the_eager_one(monkeypatch):
    """torch.compile through DT's two passes over one graph (Dynamo's tracing; the eager backend
    so the arithmetic is the same and the test needs no C++ compiler)."""
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda m, **kw: real(m, backend="eager", **kw))
    x, y = torch.rand(16, 3, 32, 32), torch.randint(0, 10, (16,))
    out = []
    for compiled in (False, True):
        cfg = Config(method="dt", heads=2, lambda_adv=1.0, compile=compiled, **MINI)
        torch.manual_seed(0)
        model = build_model(cfg).train()
        step, opt = STEPS["dt"](prepare(model, cfg), cfg, torch.device("cpu")), make_optimizer(model, cfg)
        losses = [train_step(step, opt, x, y, None)[0].item() for _ in range(2)]
        out.append((losses, step.delta.clone(), [p.detach().clone() for p in model.parameters()]))
    assert out[0][0] == pytest.approx(out[1][0], abs=1e-6)
    assert torch.allclose(out[0][1], out[1][1])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(out[0][2], out[1][2]))


def test_compile_flag_compiles_the_training_module_and_unwrap_sees_through_it(monkeypatch):
    model = build_model(Config(heads=2, **MINI))
    assert unwrap(torch.compile(model)) is model  # compiles lazily, at the first call: nothing runs here
    calls = []
    monkeypatch.setattr(torch, "compile", lambda m, **kw: calls.append(m) or torch.nn.Sequential(m))
    assert prepare(model, Config(**MINI)) is model and not calls
    wrapped = prepare(model, Config(compile=True, **MINI))
    assert calls == [model] and wrapped is not model
    assert not make_optimizer(model, Config(**MINI)).defaults.get("fused")  # CPU: the default implementation
