"""``dtlib.runtime``: the device, what precision=auto means, compilation, the model wrappers and the
phase clock: where a run executes, never what it computes."""
import time

import pytest
import torch

from dtlib import Config
from dtlib.experiment import run_dir_for
from dtlib.methods import STEPS
from dtlib.models import build_model
from dtlib.phases import PHASES, phase_split
from dtlib.runtime import (PRECISION_ENV, PhaseClock, amp_dtype, auto_precision, device_of, precision_name, prepare,
                           resolve_device, unwrap)
from dtlib.train import make_optimizer, train_step

from conftest import MINI


def test_device_auto_is_cpu_here_and_cuda_without_one_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine")
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(ValueError, match="no CUDA device is available"):
        resolve_device("cuda")
    assert amp_dtype("fp32", torch.device("cpu")) is None
    assert amp_dtype("bf16", torch.device("cpu")) == torch.bfloat16


def test_a_cuda_run_turns_tf32_off_so_fp32_means_fp32_and_a_cache_key_changes_nothing(monkeypatch):
    """precision=fp32 keys the run cache as fp32 on every device, so a run on CUDA must not round fp32
    convolutions and matrix products to TF32 (cuDNN's default); working out a key (``device_of``) or
    a CPU run leaves the process's settings alone."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.allow_tf32, matmul.allow_tf32  # process-wide settings
    try:
        for name in ("cuda", "auto"):
            cudnn.allow_tf32 = matmul.allow_tf32 = True
            assert device_of(name).type == "cuda" and cudnn.allow_tf32
            assert precision_name(Config(**{**MINI, "device": name}, precision="fp32")) == "fp32"
            assert cudnn.allow_tf32
            assert resolve_device(name) == torch.device("cuda")
            assert not cudnn.allow_tf32 and not matmul.allow_tf32
            assert torch.backends.cudnn.conv.fp32_precision != "tf32"  # what the newer settings read back
        cudnn.allow_tf32 = True
        assert resolve_device("cpu").type == "cpu" and cudnn.allow_tf32
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = saved


def test_the_environment_pins_what_auto_precision_means_and_the_cache_key_follows(monkeypatch):
    cfg = Config(**MINI)
    keys = {}
    for forced, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        monkeypatch.setenv(PRECISION_ENV, forced)
        assert auto_precision(torch.device("cpu")) == forced and amp_dtype("auto", torch.device("cpu")) == dtype
        assert amp_dtype("fp32", torch.device("cpu")) is None  # an explicit precision is never overridden
        keys[forced] = run_dir_for(cfg).name
    assert keys["fp32"] != keys["bf16"]  # a bf16 run is never reused for fp32, nor the reverse
    monkeypatch.setenv(PRECISION_ENV, "fp16")
    with pytest.raises(ValueError, match=f"{PRECISION_ENV}='fp16' must be bf16 or fp32"):
        amp_dtype("auto", torch.device("cpu"))


def test_phase_clock_splits_a_step_and_only_dt_ensemble_ce_takes_a_second_pass():
    cfg = Config(method="dt", heads=3, batch_size=32, **MINI)
    x, y = torch.rand(32, 3, 32, 32), torch.randint(0, 10, (32,))
    for objective, second_pass in (("ensemble_ce", True), ("loss", False)):
        c = cfg.replace(uap_objective=objective)
        model = build_model(c).train()
        step, opt = STEPS["dt"](model, c, torch.device("cpu")), make_optimizer(model, c)
        with step.clock.timing() as clock:
            train_step(step, opt, x, y, None)
        assert set(clock) == {"forward_and_loss", "backward", "uap_update", "optimizer"} | ({"uap_gradient"} if second_pass else set())
        assert clock["uap_gradient" if second_pass else "backward"] > 0
        parts = phase_split({k: 1e3 * v for k, v in clock.items()})
        assert parts["forward_and_loss"] > 0 and sum(parts.values()) == pytest.approx(
            1e3 * sum(v for k, v in clock.items() if k != "uap_gradient"))
    seen = dict(clock)
    train_step(step, opt, x, y, None)  # outside the clock nothing is recorded
    assert clock == seen
    with step.clock.timing() as clock:  # the phases cover the step: their sum is its wall time, less the glue
        t0 = time.perf_counter()
        train_step(step, opt, x, y, None)
        wall = time.perf_counter() - t0
    covered = sum(v for k, v in clock.items() if k != "uap_gradient")
    assert 0.8 * wall < covered <= wall


def test_compile_flag_compiles_the_training_module_and_unwrap_sees_through_it(monkeypatch):
    model = build_model(Config(heads=2, **MINI))
    assert unwrap(torch.compile(model)) is model  # compiles lazily, at the first call: nothing runs here
    calls = []
    monkeypatch.setattr(torch, "compile", lambda m, **kw: calls.append(m) or torch.nn.Sequential(m))
    assert prepare(model, Config(**MINI)) is model and not calls
    wrapped = prepare(model, Config(compile=True, **MINI))
    assert calls == [model] and wrapped is not model
    assert not make_optimizer(model, Config(**MINI)).defaults.get("fused")  # CPU: the default implementation


def test_a_phase_is_one_of_the_named_phases_and_clocks_do_not_share_times():
    a, b = PhaseClock(torch.device("cpu")), PhaseClock(torch.device("cpu"))
    with pytest.raises(ValueError, match="Unknown training phase 'forward'"):
        with a.phase("forward"):
            pass
    with a.timing() as times_a:
        with a.phase(PHASES[0]), b.phase(PHASES[2]):
            time.sleep(0.01)
    assert set(times_a) == {PHASES[0]} and times_a[PHASES[0]] >= 0.01
