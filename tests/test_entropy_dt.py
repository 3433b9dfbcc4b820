"""entropy_dt, the published method: its low-entropy samples, loss, BatchNorm settings, schedule and
the run it fine-tunes."""
import pytest
import torch
import torch.nn as nn

import dtlib
from dtlib import Config
from dtlib.checkpoint import CHECKPOINT, load_verified
from dtlib.data import Split, rotate
from dtlib.experiment import run_dir_for
from dtlib.losses import heads_cross_entropy
from dtlib.methods import STEPS, EntropyDT
from dtlib.methods.entropy_dt import feature_entropy, low_entropy_samples
from dtlib.models import build_model
from dtlib.train import make_optimizer, train_step

from conftest import MINI

pytestmark = pytest.mark.precision  # trains and fine-tunes: run under both precisions (make test-other-precision)
EPS = 10 / 255


@pytest.fixture(scope="module")
def model(standard_run):
    """A trained model: an untrained one's features are near zero, their softmax near uniform."""
    return dtlib.load_model(standard_run.run_dir)[0]


@pytest.fixture(scope="module")
def images(mini):
    return mini["train"].x[:64].float() / 255


def _bn_updates(model: nn.Module) -> int:
    return int(next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d)).num_batches_tracked)


@pytest.mark.parametrize("norm,eps", [("linf", EPS), ("l2", 1.0)])
def test_low_entropy_samples_lower_the_feature_entropy_and_stay_in_the_ball(model, images, norm, eps):
    g = torch.Generator().manual_seed(0)
    start = low_entropy_samples(model, images, eps=eps, norm=norm, steps=0, step=eps / 4, generator=g)
    g = torch.Generator().manual_seed(0)
    low = low_entropy_samples(model, images, eps=eps, norm=norm, steps=5, step=eps / 4, generator=g)
    with torch.no_grad():
        h0, h_start, h = (feature_entropy(model.features(x)).mean() for x in (images, start, low))
    assert h < h_start - 0.01 and h < h0 - 0.01
    d = (low - images).flatten(1)
    size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    assert size.max() <= eps + 1e-5
    assert low.min() >= 0 and low.max() <= 1


def test_without_the_clamp_samples_leave_the_pixel_range_as_the_published_code(model):
    white = torch.ones(8, 3, 32, 32)
    low = low_entropy_samples(model, white, eps=EPS, norm="linf", steps=2, step=EPS / 4, clamp=False,
                              generator=torch.Generator().manual_seed(0))
    assert low.max() > 1 + EPS / 2
    assert (low - white).abs().max() <= EPS + 1e-6


def _step(bn: str = "eval", leak: bool = False, alpha: float = 0.9, **more):
    cfg = Config(method="entropy_dt", ent_bn=bn, ent_leak=leak, ent_alpha=alpha, **more, **MINI)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    step = EntropyDT(model, cfg, torch.device("cpu"))
    step.begin({"head0": torch.full((1, 3, 32, 32), EPS)} if leak else None)
    if leak:
        assert torch.equal(step.leak, torch.full((1, 3, 32, 32), EPS))
    return model, step, cfg


@pytest.mark.parametrize("bn,leak,updates", [("eval", False, 2), ("train", False, 2 + 5), ("eval", True, 3),
                                             ("train", True, 3 + 5)])
def test_batchnorm_running_statistics_move_exactly_where_the_settings_say(images, bn, leak, updates):
    """Eval-mode BN while generating: only the two training forwards (clean, low-entropy) update the
    running statistics; the published train mode adds one per generation step; the leak one more."""
    model, step, _ = _step(bn, leak)
    before = _bn_updates(model)
    step.loss(images, torch.zeros(len(images), dtype=torch.long))
    assert _bn_updates(model) - before == updates
    assert model.training


def test_the_leak_moves_the_running_statistics_and_nothing_else(images):
    """With the leak the evaluation UAP's forward changes the BN running means, not the loss's gradients' graph."""
    y = torch.zeros(len(images), dtype=torch.long)
    means = []
    for leak in (False, True):
        model, step, _ = _step("eval", leak)
        step.loss(images, y)
        means.append(next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d)).running_mean.clone())
    assert not torch.allclose(means[0], means[1])


def test_with_train_mode_generation_the_leak_changes_no_weight_and_the_clean_passes_erase_it(images):
    """As published (BatchNorm in training mode while generating) nothing reads a running statistic
    while fine-tuning, so the leaked UAP changes no weight; each clean pass's training-mode update
    then shrinks its trace in the running statistics by BatchNorm's momentum (0.9 kept per batch),
    so the published repaired model (~620 clean batches on CIFAR-10) keeps none of it."""
    y = torch.randint(0, 10, (len(images),), generator=torch.Generator().manual_seed(2))
    out = []
    for leak in (False, True):
        model, step, cfg = _step("train", leak, repair_epochs=1, repair_clean_epochs=1)
        bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
        opt = make_optimizer(model, cfg)
        for _ in range(3):
            train_step(step, opt, images, y, None)
        repaired = bn.running_mean.clone()
        step.start_epoch(1, opt)
        for _ in range(4):  # the clean passes
            train_step(step, opt, images, y, None)
        out.append((model.state_dict(), repaired, bn.running_mean.clone()))
    (plain, r0, m0), (leaked, r1, m1) = out
    for k, v in plain.items():
        if "running" not in k and "num_batches" not in k:  # the counter counts the leak's forwards too
            assert torch.equal(v, leaked[k]), k
    trace = (r1 - r0).abs().max()
    assert trace > 1e-3
    assert (m1 - m0).abs().max() <= trace * 0.9 ** 4 * 1.01 + 1e-6


@pytest.mark.parametrize("alpha", [0.0, 0.9, 1.0])
def test_the_loss_mixes_clean_and_low_entropy_cross_entropy(images, alpha):
    y = torch.randint(0, 10, (len(images),), generator=torch.Generator().manual_seed(1))
    model, step, cfg = _step(alpha=alpha)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    loss, logits = step.loss(images, y)
    # the same samples again: same generator state, same weights and BN statistics
    model.load_state_dict(state)
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    model.eval()
    low = low_entropy_samples(model, images, eps=cfg.eps, norm="linf", steps=cfg.ent_steps, step=cfg.ent_step * cfg.eps,
                              generator=gen)
    model.train()
    clean_ce = heads_cross_entropy(model(images), y)
    low_ce = heads_cross_entropy(model(low), y)
    torch.testing.assert_close(loss, (1 - alpha) * clean_ce + alpha * low_ce, rtol=1e-5, atol=1e-5)
    if alpha:
        torch.testing.assert_close(step.parts["ce_low"], low_ce.detach(), rtol=1e-5, atol=1e-5)


def test_the_control_fine_tunes_on_clean_images_alone_and_makes_no_sample(images, monkeypatch):
    """``ent_alpha=0`` (06's ``finetune_ctl``): the same schedule and repair set, one clean forward
    per batch, no low-entropy sample made; with the leak it is refused, as the leak would do nothing."""
    def refuse(*a, **k):
        raise AssertionError("a low-entropy sample was made for the control")

    monkeypatch.setattr("dtlib.methods.entropy_dt.low_entropy_samples", refuse)
    y = torch.randint(0, 10, (len(images),), generator=torch.Generator().manual_seed(1))
    model, step, cfg = _step(alpha=0.0)
    before = _bn_updates(model)
    loss, logits = step.loss(images, y)
    assert _bn_updates(model) == before + 1 and step.parts == {}
    torch.testing.assert_close(loss, heads_cross_entropy(logits, y))
    assert STEPS["entropy_dt"].base(cfg)[0] == STEPS["entropy_dt"].base(cfg.replace(ent_alpha=0.9))[0]  # same start
    with pytest.raises(ValueError, match="ent_leak=True has no effect with ent_alpha=0"):
        Config(method="entropy_dt", ent_alpha=0.0, ent_leak=True)


def test_the_schedule_fine_tunes_then_passes_clean_with_a_new_optimizer(images):
    model, step, cfg = _step(repair_epochs=2, repair_clean_epochs=1)
    plan = STEPS["entropy_dt"].schedule(cfg)
    assert (plan.epochs, plan.batch_size, plan.lr, plan.weight_decay, plan.nesterov) == (3, 32, 1e-3, 0.0, False)
    total = 30
    assert [plan.factor(s, total) for s in (0, 19, 20, 29)] == [1.0, 1.0, pytest.approx(1e-2), pytest.approx(1e-2)]
    opt = make_optimizer(model, cfg)
    assert not opt.defaults["nesterov"] and opt.defaults["weight_decay"] == 0 and opt.defaults["lr"] == 1e-3
    y = torch.zeros(len(images), dtype=torch.long)
    train_step(step, opt, images, y, None)
    assert opt.state
    step.start_epoch(2, opt, fresh=False)  # resumed inside the clean epoch: its momentum is kept
    assert opt.state
    step.start_epoch(2, opt)
    assert not opt.state
    _, logits = step.loss(images, y)
    assert step.parts == {} and logits.shape == (1, len(images), 10)  # clean passes: plain cross-entropy


@pytest.mark.heavy
def test_a_run_fine_tunes_the_cached_standard_run_of_the_same_settings(tmp_path):
    common = dict(train_size=400, val_size=100, epochs=1, batch_size=64, uap_fit_size=100, uap_epochs=1,
                  uap_refine=0, eval_objectives="ensemble_ce", eval_labels="predicted", eval_size=100, **MINI)
    quiet = dict(runs_dir=tmp_path, progress=False, log=lambda s: None)
    # a learning rate of ~0 keeps the weights: the fine-tuned run starts from the standard run's
    res = dtlib.run(method="entropy_dt", repair_size=100, repair_epochs=1, repair_clean_epochs=1, repair_lr=1e-12,
                    repair_clean_lr=1e-12, **common, **quiet)
    std = Config(method="standard", **common)
    base = load_verified(run_dir_for(std, tmp_path) / CHECKPOINT)
    tuned = load_verified(res.run_dir / CHECKPOINT)
    assert base["finished"] and tuned["finished"] and tuned["step"] == 2 * (100 // 32)
    for k, v in base["model"].items():
        if "running" not in k and "num_batches" not in k:
            torch.testing.assert_close(tuned["model"][k], v, rtol=0, atol=1e-6)
    assert dtlib.run(method="standard", **common, **quiet).run_dir == run_dir_for(std, tmp_path)  # the same cached run
    # a leaking run is tied to the evaluation whose UAP it leaked: another setting is refused in one sentence
    leak = dtlib.run(method="entropy_dt", ent_leak=True, repair_size=100, repair_epochs=1, repair_clean_epochs=0,
                     **common, **quiet)
    with pytest.raises(ValueError, match=r"leaked the UAP of another evaluation setting into its BatchNorm statistics"):
        dtlib.evaluate_run(leak.run_dir, leak.config.replace(eval_eps=8 / 255), log=lambda s: None)


def test_a_targeted_evaluation_leaks_the_targeted_uap():
    cfg = Config(method="entropy_dt", ent_leak=True, eval_target=9, **MINI)
    step = EntropyDT(build_model(cfg), cfg, torch.device("cpu"))
    step.begin({"head0": torch.zeros(1, 3, 32, 32), "head0/targeted": torch.full((1, 3, 32, 32), EPS)})
    assert torch.equal(step.leak, torch.full((1, 3, 32, 32), EPS))


def test_the_leaked_runs_key_covers_the_evaluation_it_leaks():
    leak = Config(method="entropy_dt", ent_leak=True)
    assert leak.train_hash() != leak.replace(eval_eps=8 / 255).train_hash()
    careful = Config(method="entropy_dt")
    assert careful.train_hash() == careful.replace(eval_eps=8 / 255).train_hash()
    assert Config().train_hash() == Config().replace(ent_leak=True, repair_lr=0.5).train_hash()


def test_a_repair_set_larger_than_the_training_split_is_refused(mini):
    split = Split(mini["train"].x[:100], mini["train"].y[:100])
    with pytest.raises(ValueError, match="repair_size=2000 is more than the 100 training images"):
        EntropyDT.training_images(Config(method="entropy_dt"), split)
    with pytest.raises(ValueError, match="Unknown ent_bn 'batch'; choose one of eval, train"):
        Config(method="entropy_dt", ent_bn="batch")


def test_the_repair_set_is_class_balanced_and_seeded(mini):
    cfg = Config(method="entropy_dt", repair_size=100)
    a = EntropyDT.training_images(cfg, mini["train"])
    assert torch.bincount(a.y, minlength=10).tolist() == [10] * 10
    assert torch.equal(a.x, EntropyDT.training_images(cfg, mini["train"]).x)
    assert not torch.equal(a.x, EntropyDT.training_images(cfg.replace(seed=1), mini["train"]).x)


def test_rotation_turns_images_about_their_centre():
    x = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(rotate(x, torch.zeros(2)), x)
    turned = rotate(x, torch.tensor([90.0, -90.0]))
    torch.testing.assert_close(turned[0], torch.rot90(x[0], 1, (1, 2)))
    torch.testing.assert_close(turned[1], torch.rot90(x[1], -1, (1, 2)))
