"""``dtlib.measure``: training memory, step times and their ratios, measured in one process (what the
study's 02 and 05 notebooks and the benchmark report)."""
import pytest
import torch

from dtlib import Config
from dtlib.data import load_cifar10
from dtlib.measure import PeakTensorBytes, ratio_summary, training_steps
from dtlib.methods import STEPS
from dtlib.models import build_model
from dtlib.runtime import prepare
from dtlib.train import make_optimizer, train_step

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


def test_a_method_with_its_own_schedule_is_timed_at_its_batch_size_leak_included():
    """entropy_dt trains on batches of repair_batch_size, and a leaking step forwards one more batch."""
    mini = load_cifar10("mini", DATA_DIR)["train"].subset(torch.arange(128))
    cases = {"standard": {}, "ent": {"method": "entropy_dt", "repair_batch_size": 16},
             "leak": {"method": "entropy_dt", "repair_batch_size": 16, "ent_leak": True}}
    out = training_steps(Config(batch_size=32, **MINI), mini, cases, steps=2, warmup=1)
    assert out["standard"]["batch_size"] == 32 and out["ent"]["batch_size"] == out["leak"]["batch_size"] == 16
    assert out["ent"]["images_per_s"] == pytest.approx(16 / out["ent"]["median_s"])


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
