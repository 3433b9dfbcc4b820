"""``dtlib.measure``: training memory, step times and their ratios, measured in one process (what the
study's 02 and 05 notebooks and the benchmark report)."""
import pytest
import torch

from dtlib import Config, measure, roofline
from dtlib.data import load_cifar10
from dtlib.measure import PeakTensorBytes, bench_split, ratio_summary, training_steps
from dtlib.roofline import count_flops
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


def test_the_flop_counter_counts_convolutions_and_matrix_products_forward_and_backward():
    conv, lin = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.Linear(16, 4)
    x = torch.rand(2, 3, 8, 8)
    assert count_flops(lambda: conv(x)) == 2 * 2 * 8 * 8 * 8 * 3 * 9  # 2 FLOPs per multiply-add
    z = torch.rand(5, 16, requires_grad=True)
    # backward: the input's and the weight's gradients, each a product of the forward's size
    assert count_flops(lambda: lin(z).sum().backward()) == 3 * 2 * 5 * 16 * 4


INTEL, ZEN4, ZEN5 = ("GenuineIntel", 6), ("AuthenticAMD", 25), ("AuthenticAMD", 26)


@pytest.mark.parametrize("flags,cpu,precision,expected", [
    ({"avx2", "fma"}, ZEN4, "fp32", 2 * 2000e6 * 32), ({"avx512f", "avx2"}, INTEL, "fp32", 2 * 2000e6 * 64),
    ({"avx512f", "avx512_bf16"}, INTEL, "bf16", 2 * 2000e6 * 128),
    ({"amx_bf16", "avx512_bf16"}, INTEL, "bf16", 2 * 2000e6 * 1024),  # a 16x16x32 tile product per 16 cycles
    # AMD before Zen 5 runs 512-bit instructions as two 256-bit halves
    ({"avx512f", "avx512_bf16"}, ZEN4, "fp32", 2 * 2000e6 * 32), ({"avx512f", "avx512_bf16"}, ZEN4, "bf16", 2 * 2000e6 * 64),
    ({"avx512f", "avx512_bf16"}, ZEN5, "bf16", 2 * 2000e6 * 128),
    ({"avx2", "fma"}, INTEL, "bf16", None)])  # bf16 without instructions of its own is emulated: no peak
def test_the_nominal_peak_follows_the_widest_instructions_of_the_precision(monkeypatch, flags, cpu, precision, expected):
    monkeypatch.setattr(roofline, "cpu_flags", lambda: flags)
    monkeypatch.setattr(roofline, "cpu_vendor_family", lambda: cpu)
    monkeypatch.setattr(roofline, "cpu_mhz", lambda: 2000.0)
    peak, basis = roofline.nominal_flops_per_s(torch.device("cpu"), precision, threads=2)
    assert peak == expected and basis
    ceiling = {"gemm_gflops": 100.0, "nominal_gflops": None if peak is None else peak / 1e9}
    r = roofline.against(3e9, 0.1, ceiling)
    assert r["gflops"] == pytest.approx(30.0) and r["of_gemm"] == pytest.approx(0.3)
    assert r["of_nominal"] == (None if peak is None else pytest.approx(30e9 / peak))


def test_a_dt_case_with_uap_every_is_timed_and_counted_over_whole_cycles():
    """uap_every=2: one timed step is the mean of two (one moves the UAP, one does not), and its
    FLOPs lie between a step that skips the UAP's pass and one that runs it."""
    cfg = Config(**MINI, batch_size=16)
    split = bench_split(cfg, 64)
    out = training_steps(cfg, split, {"standard": dict(method="standard", heads=1),
                                      "dt": dict(method="dt", heads=2), "dt_every2": dict(method="dt", heads=2, uap_every=2)},
                         steps=2, warmup=0)
    assert len(out["dt_every2"]["times_s"]) == 2
    assert 2 * out["standard"]["flops"] < out["dt_every2"]["flops"] < out["dt"]["flops"]


@pytest.mark.parametrize("flags,slug", [({"amx_bf16", "avx512_bf16", "avx512f", "avx2"}, "cpu-amx"),
                                        ({"avx512_bf16", "avx512f", "avx2"}, "cpu-avx512bf16"),
                                        ({"avx512f", "avx2"}, "cpu-avx512"), ({"avx2", "fma"}, "cpu-avx2"), (set(), "cpu")])
def test_a_cpu_benchmark_is_named_by_its_kind_of_cpu(monkeypatch, flags, slug):
    monkeypatch.setattr(measure, "cpu_flags", lambda: flags)
    assert measure.device_slug(torch.device("cpu")) == slug
