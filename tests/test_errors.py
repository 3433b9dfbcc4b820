"""Every bad input a user can give is refused before any work starts, in one sentence that names
the bad value. The table below is the list (``python tests/test_errors.py`` prints each input and
the message it gets); a property test then walks the whole config space.
"""
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st

import dtlib
import dtlib.evaluate
from dtlib import Config
from dtlib.attacks import sgd_uap
from dtlib.config import parse_overrides
from dtlib.data import Loader, Split, load_arrays, load_data
from dtlib.metrics import predict
from dtlib.losses import dt_loss
from dtlib.models import build_model
from dtlib.study import check_parameters, setup
from dtlib.runtime import amp_dtype
from dtlib.train import train

from conftest import DATA_DIR, MINI


def _model(heads: int = 2):
    torch.manual_seed(0)
    return build_model(Config(heads=heads, **MINI)).eval()


def _npz(tmp: Path, change) -> Path:
    """The mini set written to ``tmp`` with ``change(arrays)`` applied: a file a user might have."""
    a = {k: v.copy() for k, v in load_arrays("mini", DATA_DIR).items()}
    change(a)
    np.savez(tmp / "cifar10-mini.npz", **a)
    return tmp


def _nan_images() -> torch.Tensor:
    x = torch.rand(4, 3, 32, 32)
    x[1, 0, 5, 5] = float("nan")
    return x


def _papermill_cell(params: dict) -> list[str]:
    """IPython's input history as papermill leaves it: the cell papermill injects, as it writes it."""
    from papermill.translators import translate_parameters
    return ["profile = 'cpu'\noverrides = {}\nroot = None", translate_parameters("python3", "python", params, "Parameters")]


def _other_config_checkpoint(tmp: Path) -> None:
    cfg = Config(train_size=200, epochs=1, batch_size=50, **MINI)
    split, _, _ = load_data(cfg)
    train(cfg, split, run_dir=tmp, progress=False, log=lambda s: None)
    train(cfg.replace(lr=0.05), split, run_dir=tmp, progress=False, log=lambda s: None)


def _run_in(tmp: Path, **kw) -> None:
    dtlib.run(runs_dir=tmp / "runs", progress=False, log=lambda s: None, **{**MINI, "data_dir": str(tmp), **kw})


# (the bad input, how it is given, the message it must get: a regex of the whole sentence's core)
BAD_INPUTS = [
    ("K < 1", lambda t: Config(heads=0), r"^heads \(K\) must be at least 1, got 0\.$"),
    ("no process to train", lambda t: Config(nproc=0), r"^nproc must be at least 1, got 0\.$"),
    ("SyncBatchNorm on one process", lambda t: Config(sync_bn=True),
     r"^sync_bn=true needs nproc > 1 on CUDA, got nproc=1 and device='auto'\.$"),
    ("K not an integer", lambda t: Config(heads=2.5), r"^Config field heads=2\.5 must be an integer\.$"),
    ("K not an integer (command line)", lambda t: parse_overrides(["heads=two"]),
     r"^Config field heads='two' is not an integer\.$"),
    ("K not an integer (model)", lambda t: dtlib.models.MultiHead(torch.nn.Flatten(), 3, heads=1.5),
     r"^heads \(K\) must be an integer of at least 1, got 1\.5\.$"),
    ("eps < 0", lambda t: Config(eps=-0.01), r"^eps=-0\.01 is outside \[0, 1\] for the linf norm"),
    ("eps > 1", lambda t: Config(eval_eps=1.5), r"^eval_eps=1\.5 is outside \[0, 1\] for the linf norm"),
    ("eps > 1 (attack)", lambda t: sgd_uap(lambda x: x.flatten(1)[:, :10], torch.rand(4, 3, 32, 32),
                                           torch.zeros(4, dtype=torch.long), eps=2.0),
     r"^eps=2\.0 is outside \[0, 1\] for the linf norm"),
    ("unknown norm", lambda t: Config(norm="l1"), r"^Unknown norm 'l1'; choose one of linf, l2\.$"),
    ("unknown norm (attack)", lambda t: dtlib.attacks.random_uap((1, 3, 32, 32), 0.1, "l3"),
     r"^Unknown norm 'l3'; choose one of linf, l2\.$"),
    ("unknown method", lambda t: Config(method="fgsm_at"),
     r"^Unknown method 'fgsm_at'; choose one of standard, dt, pgd_at, uat, entropy_dt\.$"),
    ("unknown backbone", lambda t: Config(backbone="resnet34"),
     r"^Unknown backbone 'resnet34'; choose one of cnn, vgg, resnet18, resnet50\.$"),
    ("unknown profile", lambda t: setup("huge"), r"^Unknown profile 'huge'; choose one of smoke, cpu, study, gpu, imagenet\.$"),
    ("unknown inference mode", lambda t: Config(eval_modes="ensemble,vote"),
     r"^Unknown inference mode 'vote' in eval_modes; choose from ensemble, single\.$"),
    ("unknown inference mode (model)", lambda t: _model().scores(torch.rand(1, 3, 32, 32), "vote"),
     r"^Unknown inference mode 'vote'; choose from ensemble, single\.$"),
    ("head index out of range", lambda t: Config(heads=2, eval_head=2),
     r"^eval_head 2 is out of range for a model with 2 heads\.$"),
    ("head index out of range (model)", lambda t: _model().classifier("single", head=-1),
     r"^head index -1 is out of range for a model with 2 heads\.$"),
    ("loss weight negative", lambda t: Config(lambda_div=-1.0), r"^lambda_div must be non-negative, got -1\.0\.$"),
    ("loss weight NaN", lambda t: Config(lambda_adv=float("nan")),
     r"^Config field lambda_adv=nan must be a finite number\.$"),
    ("loss weight NaN (loss)", lambda t: dt_loss(torch.zeros(2, 4, 10), torch.zeros(2, 4, 10), torch.zeros(4, dtype=torch.long),
                                                 lambda_div=float("nan")),
     r"^lambda_div must be a finite non-negative number, got nan\.$"),
    ("batch size < 1", lambda t: Config(batch_size=0),
     r"^batch_size must be at least 2 \(BatchNorm needs two images per batch to train\), got 0\.$"),
    ("batch size < 1 (loader)", lambda t: Loader(Split(torch.zeros(4, 3, 32, 32, dtype=torch.uint8),
                                                       torch.zeros(4, dtype=torch.long)), -2),
     r"^batch_size must be at least 1, got -2\.$"),
    ("batch larger than the data", lambda t: _run_in(t, data_dir=str(DATA_DIR), train_size=100, batch_size=128),
     r"^The split has 100 images, fewer than one batch of 128; lower batch_size\.$"),
    ("data file missing", lambda t: _run_in(t, data="full"),
     r"^CIFAR-10 was not found in .*: put the CIFAR-10 npz"),
    ("data file with a wrong checksum", lambda t: _run_in(_npz(t, lambda a: a["x_train"].__setitem__((0, 0, 0, 0), 7))),
     r"cifar10-mini\.npz fails its sha256 check \(corrupt or a different dataset\); replace it with an intact copy\.$"),
    ("data file with wrong shapes", lambda t: _run_in(_npz(t, lambda a: a.__setitem__("x_test", a["x_test"].transpose(0, 3, 1, 2)))),
     r"x_test has shape \(1000, 3, 32, 32\) and dtype uint8; expected \(N, 32, 32, 3\) uint8\.$"),
    ("data file with a wrong dtype", lambda t: _run_in(_npz(t, lambda a: a.__setitem__("x_train", a["x_train"] / 255.0))),
     r"x_train has shape \(2000, 32, 32, 3\) and dtype float64; expected \(N, 32, 32, 3\) uint8\.$"),
    ("data file with labels out of range", lambda t: _run_in(_npz(t, lambda a: a["y_test"].__setitem__(3, 10))),
     r"y_test holds label 10, outside 0\.\.9\.$"),
    ("images with NaN/Inf (a split)", lambda t: Split(_nan_images(), torch.zeros(4, dtype=torch.long)),
     r"^The split's images hold 1 NaN or Inf values; pixels must be finite numbers in \[0, 1\]\.$"),
    ("images with NaN/Inf (evaluation)", lambda t: predict(lambda x: x.flatten(1)[:, :10], _nan_images()),
     r"^The images to predict hold 1 NaN or Inf values; pixels must be finite numbers in \[0, 1\]\.$"),
    ("images with NaN/Inf (UAP fitting)", lambda t: sgd_uap(lambda x: x.flatten(1)[:, :10], _nan_images().clamp(max=1) * float("inf"),
                                                           torch.zeros(4, dtype=torch.long), eps=0.03),
     r"^The UAP fitting images hold \d+ NaN or Inf values; pixels must be finite numbers in \[0, 1\]\.$"),
    ("images outside [0, 1]", lambda t: predict(lambda x: x.flatten(1)[:, :10], torch.rand(2, 3, 32, 32) * 255),
     r"^The images to predict range over \[.*\]; pixels must lie in \[0, 1\] \(uint8 images / 255\)\.$"),
    ("a checkpoint from a different config", _other_config_checkpoint,
     r"checkpoint\.pt was written for a different training config \(lr=0\.1, asked 0\.05\); "
     r"delete it or use another run directory\.$"),
    ("an unknown papermill parameter name", lambda t: check_parameters({"In": _papermill_cell({"seedz": 3})}),
     r"^Unknown notebook parameter 'seedz'; the notebooks take profile, overrides, root "
     r"\(Study and Config fields go inside overrides\)\.$"),
    ("an unknown field inside overrides", lambda t: setup("smoke", {"seedz": [0]}),
     r"^Unknown parameter 'seedz'; use a Study field"),
    ("overrides that are not a dict", lambda t: setup("smoke", "[1, 2]"),
     r"^overrides must be a dict of Study or Config fields, got '\[1, 2\]'"),
    ("overrides given as text that is not JSON", lambda t: setup("smoke", "{'seeds': [0]}"),
     r"^overrides must be a dict of Study or Config fields, got \"\{'seeds': \[0\]\}\""),
    ("a K below 1 in the study's K list", lambda t: setup("smoke", {"ks": [1, 0]}),
     r"^ks holds 0: heads \(K\) must be at least 1, got 0\.$"),
    ("an eps above 1 in the study's radii", lambda t: setup("smoke", {"linf_radii": [1.5]}),
     r"^linf_radii holds 1\.5: eval_eps=1\.5 is outside \[0, 1\] for the linf norm"),
    ("an unknown backbone in the study's transfer list", lambda t: setup("smoke", {"transfer_backbones": ["resnet34"]}),
     r"^transfer_backbones holds 'resnet34': unknown backbone 'resnet34'; choose one of cnn, vgg, resnet18, resnet50\.$"),
    ("labels out of range (a split)", lambda t: Split(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.tensor([3, 11])),
     r"^A Split's labels hold 11, outside 0\.\.9\.$"),
    ("validation scoring without a validation split", lambda t: Config(eval_split="val"),
     r"^eval_split='val' scores on the validation split, but val_size=0 holds none out; set val_size\.$"),
]


@pytest.mark.parametrize("label,give,message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_a_bad_input_is_one_sentence_naming_it_before_any_work(label, give, message, tmp_path):
    with pytest.raises(ValueError) as err:  # DataError and CorruptFile are ValueErrors too
        give(tmp_path)
    text = str(err.value)
    assert "\n" not in text and text.endswith("."), text
    assert re.search(message, text), text
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.pt")), "work was done first"


# ---------------------------------------------------------------------------------------------
# the whole config space

NAN, INF = float("nan"), float("inf")
# Values a run can take: every field drawn from here gives a config that should train.
VALID = {
    "method": st.sampled_from(["dt", "uat", "pgd_at", "standard"]),
    "backbone": st.sampled_from(["cnn", "vgg", "cnn", "resnet18"]),
    "heads": st.integers(1, 4),
    "lambda_cons": st.floats(0, 3),
    "lambda_div": st.floats(0, 3),
    "lambda_adv": st.floats(0, 3),
    "norm": st.sampled_from(["linf", "l2"]),
    "eps": st.floats(0, 0.1),
    "uap_step": st.floats(0, 0.02),
    "uap_objective": st.sampled_from(["ensemble_ce", "loss"]),
    "uap_every": st.integers(1, 3),
    "pgd_eps": st.floats(0, 0.05),
    "pgd_steps": st.integers(0, 2),
    "pgd_alpha": st.floats(0, 0.03),
    "batch_size": st.integers(2, 40),
    "lr": st.floats(1e-4, 1.0),
    "weight_decay": st.floats(0, 1e-3),
    "warmup": st.floats(0, 0.9),
    "seed": st.integers(0, 100),
    "train_size": st.sampled_from([0, 200, 500]),
    "val_size": st.sampled_from([0, 100]),
    "precision": st.sampled_from(["auto", "fp32", "bf16"]),
    "eval_norm": st.sampled_from(["linf", "l2"]),
    "eval_eps": st.floats(0, 0.1),
    "eval_modes": st.sampled_from(["ensemble,single", "single", "ensemble"]),
    "eval_size": st.sampled_from([0, 100]),
    "uap_lr": st.sampled_from(["0.1", "0.05,0.2"]),
    "uap_decay": st.floats(0.1, 1.0),
    "uap_restarts": st.integers(1, 2),
    "uap_window": st.integers(1, 30),
    "uap_patience": st.integers(1, 5),
    "uap_tol": st.floats(0, 0.1),
    "eval_objectives": st.sampled_from(["ensemble_ce", "heads_ce,mean_logit", "ensemble_ce,heads_ce,mean_logit"]),
    "eval_labels": st.sampled_from(["predicted", "true", "predicted,true"]),
    "checkpointing": st.booleans(),
    "checkpoint_minutes": st.floats(0.1, 10),
}
# Anything a user might type instead, valid or not, field by field.
ANY = {
    "method": st.sampled_from(["standard", "dt", "fgsm", "", 3]),
    "backbone": st.sampled_from(["cnn", "resnet34", None]),
    "heads": st.one_of(st.integers(-1, 4), st.sampled_from([2.5, "3", "two", True, None])),
    "lambda_cons": st.sampled_from([NAN, INF, -0.5, "1/2"]),
    "lambda_div": st.sampled_from([NAN, -INF, -1.0, "x"]),
    "lambda_adv": st.sampled_from([NAN, "1", -2]),
    "norm": st.sampled_from(["l1", "Linf", ""]),
    "eps": st.one_of(st.floats(-0.1, 1.2), st.sampled_from([NAN, 60.0, "10/255", "1/0"])),
    "uap_step": st.floats(-0.01, 0.1),
    "uap_objective": st.sampled_from(["ce", None]),
    "uap_every": st.sampled_from([0, -1, 2.5]),
    "pgd_steps": st.sampled_from([-1, 1.5]),
    "pgd_alpha": st.floats(-0.01, 0.05),
    "batch_size": st.sampled_from([-1, 0, 1, 10**6, "64"]),
    "lr": st.sampled_from([NAN, 0.0, -0.1, INF]),
    "weight_decay": st.sampled_from([-0.01, NAN]),
    "warmup": st.sampled_from([-0.2, 1.0, 1.2]),
    "seed": st.sampled_from([-1, 2**31, 0.5]),
    "train_size": st.sampled_from([205, 5000, -10]),
    "val_size": st.sampled_from([55, 3000, -1]),
    "precision": st.sampled_from(["fp16", ""]),
    "eval_norm": st.sampled_from(["l0"]),
    "eval_eps": st.floats(-0.1, 2.0),
    "eval_modes": st.sampled_from(["", "vote", "single,"]),
    "eval_head": st.integers(-1, 4),
    "eval_size": st.sampled_from([15, -10, 10**6]),
    "eval_split": st.sampled_from(["val", "train"]),
    "uap_lr": st.sampled_from(["x", "-1", "", 0.1, "0.1,,0.2"]),
    "uap_decay": st.floats(-0.5, 1.5),
    "uap_restarts": st.integers(-1, 0),
    "uap_fit_size": st.sampled_from([0, -5]),
    "uap_window": st.sampled_from([0, -3, 2.5]),
    "uap_patience": st.sampled_from([0, -1, 1.5]),
    "uap_tol": st.sampled_from([-0.1, 1.0, NAN]),
    "eval_objectives": st.sampled_from(["", "ce", "ensemble_ce,,", "logit"]),
    "eval_labels": st.sampled_from(["", "target", "true,predicted,x"]),
    "checkpointing": st.sampled_from(["yes", "maybe", 2]),
    "checkpoint_minutes": st.sampled_from([0.0, -1.0, NAN]),
    "compile": st.sampled_from([True, "no"]),
    "device": st.sampled_from(["tpu", "cpu"]),
    "data": st.sampled_from(["imagenet", "mini", "cifar100"]),
    "image_size": st.sampled_from([8, -1, 224]),
    "workers": st.sampled_from([-1, 0, 2.5]),
    "bogus_field": st.just(1),
}
# Configs tried per run: 25 by default (each trains and evaluates: ~2 s); DTLIB_CONFIG_EXAMPLES=200 for a
# thorough pass. Hypothesis keeps what failed in .hypothesis/ and tries it first the next time.
EXAMPLES = int(os.environ.get("DTLIB_CONFIG_EXAMPLES", "25"))
# A run's config with, half the time, one or two fields replaced by anything at all.
REQUIRED = ("method", "heads")  # always drawn, so every method is tried, with K > 1 too
CONFIGS = st.tuples(st.fixed_dictionaries({k: VALID[k] for k in REQUIRED},
                                          optional={k: v for k, v in VALID.items() if k not in REQUIRED}),
                    st.lists(st.sampled_from(sorted(ANY)).flatmap(lambda k: st.tuples(st.just(k), ANY[k])), max_size=2)
                    ).map(lambda t: {**t[0], **dict(t[1])})


@settings(max_examples=EXAMPLES, deadline=None)
@given(CONFIGS)
def test_any_config_is_accepted_and_trains_and_evaluates_or_is_refused_in_one_sentence(fields):
    """Through the library's own entry points: the data a run loads, ``train`` (a small split,
    one epoch of at most two batches, with its loader, compile/checkpointing preparation and
    method step) and ``evaluate_model`` (a small SGD-UAP against each inference mode)."""
    try:
        cfg = Config(**MINI).replace(**fields)
        split, val, test = load_data(cfg)
        Loader(split, cfg.batch_size)
    except ValueError as e:
        text = str(e)
        assert "\n" not in text and text.endswith("."), text
        event(f"refused: {type(e).__name__}")
        return
    event(f"accepted: {cfg.method} {cfg.backbone}")
    small = split.subset(torch.arange(min(len(split), 2 * cfg.batch_size)))
    try:
        model, stats = train(cfg.replace(epochs=1), small, progress=False, log=lambda s: None)
    except FloatingPointError as e:  # a large step can diverge: said in one sentence, not a crash
        assert "\n" not in str(e) and str(e).endswith("."), str(e)
        return
    assert math.isfinite(stats["final_loss"])
    scored = (val if cfg.eval_split == "val" else test).subset(torch.arange(20))
    rows, uaps = dtlib.evaluate.evaluate_model(model, cfg.replace(uap_fit_size=16, uap_epochs=1, uap_refine=1, eval_size=0),
                                               small, scored, amp_dtype(cfg.precision, torch.device("cpu")))
    assert {k.split("/")[0] for k in uaps} == set(rows) and all(0 <= r["clean_acc"] <= 1 for r in rows.values())
    assert all(r["fooling_rate"] == max(e["fooling_rate"] for e in r["attack"].values()) for r in rows.values())


if __name__ == "__main__":  # the closing note's list: each bad input and the message it gets
    import tempfile
    for label, give, _ in BAD_INPUTS:
        with tempfile.TemporaryDirectory() as d:
            try:
                give(Path(d))
                print(f"| {label} | (no error!) |")
            except ValueError as e:
                print(f"| {label} | {e} |")
